package portnode

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vserial/vserial/cuse"
	"github.com/vserial/vserial/driver"
	"github.com/vserial/vserial/internal/guard"
	"github.com/vserial/vserial/pump"
	"golang.org/x/sys/unix"
)

// file is the node's one open file: an in-process endpoint of the device's
// loop. Reads take turns, and so do writes (rsem, wsem), so the endpoint's
// deadlines, which wake a waiting Read or Write, belong to the one request
// that waits.
type file struct {
	pt   *Port
	fh   uint64
	ep   *pump.Endpoint
	rsem chan struct{}
	wsem chan struct{}
	stop chan struct{} // closed at release: ends the watcher
	done chan struct{} // closed when the watcher returned

	// kh is the kernel's poll handle of the file (one per open file,
	// valid until release), known once a poll asked for notifications.
	kh    atomic.Uint64
	hasKH atomic.Bool
}

// past is a deadline that has passed: a Read or Write with it does not wait.
var past = time.Unix(1, 0)

// Open is the node's open(2): Linux's port_fops_open.
func (pt *Port) Open(ctx context.Context, r cuse.Request) (uint64, syscall.Errno) {
	if pt.p.IsConsole() {
		return 0, syscall.ENXIO // a console port is the hvc's
	}
	if err := pt.awaitRelease(ctx); err != 0 {
		return 0, err
	}
	pt.mu.Lock()
	if pt.gone || pt.unplugged() {
		pt.mu.Unlock()
		return 0, syscall.ENXIO
	}
	if pt.held != heldNone {
		pt.mu.Unlock()
		return 0, syscall.EBUSY
	}
	pt.held = heldNode
	pt.mu.Unlock()
	ep, err := pt.loop.Attach(pt.p)
	if err == nil {
		octx, cancel := context.WithTimeout(ctx, openTimeout)
		err = pt.p.SetGuestOpen(octx, true)
		cancel()
		if err != nil {
			ep.Close()
		}
	}
	if err != nil {
		pt.mu.Lock()
		pt.held = heldNone
		pt.mu.Unlock()
		pt.log.Info("node open refused", "err", err)
		if errors.Is(err, pump.ErrBusy) {
			return 0, syscall.EBUSY
		}
		return 0, syscall.ENXIO
	}
	f := &file{
		pt: pt, ep: ep,
		rsem: make(chan struct{}, 1), wsem: make(chan struct{}, 1),
		stop: make(chan struct{}), done: make(chan struct{}),
	}
	pt.mu.Lock()
	pt.nextFH++
	f.fh = pt.nextFH
	pt.f = f
	pt.mu.Unlock()
	go f.watch()
	pt.log.Info("node opened", "pid", r.PID, "uid", r.UID)
	return f.fh, 0
}

// awaitRelease waits (within handoverWait and PORT_OPEN 0) for the release of the
// previous opener to finish.
func (pt *Port) awaitRelease(ctx context.Context) syscall.Errno {
	pt.mu.Lock()
	rel := pt.releasing
	pt.mu.Unlock()
	if rel == nil {
		return 0
	}
	// The release waits up to handoverWait for the device, then tells
	// the host.
	t := time.NewTimer(handoverWait + openTimeout)
	defer t.Stop()
	select {
	case <-rel:
	case <-t.C:
	case <-ctx.Done():
		return syscall.EINTR
	}
	return 0
}

// fileFor returns the open file fh names, or nil.
func (pt *Port) fileFor(fh uint64) *file {
	pt.mu.Lock()
	defer pt.mu.Unlock()
	if pt.f == nil || pt.f.fh != fh {
		return nil
	}
	return pt.f
}

// Release is the last close(2) of the open file: Linux's
// port_fops_release, PORT_OPEN 0 once the device took what was written.
// The close returns at once; an open meanwhile waits for the rest.
func (pt *Port) Release(r cuse.Request) {
	f := pt.fileFor(r.FH)
	if f == nil {
		return
	}
	rel := make(chan struct{})
	pt.mu.Lock()
	pt.f = nil
	pt.releasing = rel
	pt.mu.Unlock()
	close(f.stop)
	go func() {
		defer guard.Recover()
		defer close(rel)
		<-f.done
		f.ep.SetWriteDeadline(time.Now().Add(handoverWait))
		if err := f.ep.Close(); err != nil {
			pt.log.Warn("node closed before the device took every byte written", "err", err)
		}
		if !pt.p.Removed() {
			ctx, cancel := context.WithTimeout(context.Background(), openTimeout)
			if err := pt.p.SetGuestOpen(ctx, false); err != nil {
				pt.log.Warn("cannot tell the host the node closed", "err", err)
			}
			cancel()
		}
		pt.mu.Lock()
		pt.held = heldNone
		pt.releasing = nil
		pt.mu.Unlock()
		pt.log.Info("node closed")
	}()
}

// Read is Linux's port_fops_read: bytes if any are buffered; else 0 (end
// of file) while the host is away, EAGAIN without blocking, or wait.
func (pt *Port) Read(ctx context.Context, r cuse.Request, b []byte) (int, syscall.Errno) {
	f := pt.fileFor(r.FH)
	if f == nil {
		return 0, syscall.ENODEV
	}
	if pt.unplugged() {
		return 0, syscall.ENODEV // Linux: the port is hot-unplugged
	}
	if len(b) == 0 {
		return 0, 0
	}
	if !acquire(ctx, f.rsem) {
		return 0, syscall.EINTR
	}
	defer func() { <-f.rsem }()
	nonblock := r.Flags&unix.O_NONBLOCK != 0 || r.Offset > 0
	for {
		f.ep.SetReadDeadline(past)
		n, err := f.ep.Read(b)
		if n > 0 {
			return n, 0
		}
		if err != nil && !errors.Is(err, pump.ErrDeadline) {
			return readErr(err)
		}
		if !pt.p.HostConnected() || r.Offset > 0 {
			return 0, 0 // end of file (or the end of a split read)
		}
		if nonblock {
			f.ep.WatchAlso(pump.WatchRead) // poll hears when to try again
			return 0, syscall.EAGAIN
		}
		// Wait. The watcher moves the deadline to the past when the port
		// changes (the host left), INTERRUPT through ctx.
		f.ep.SetReadDeadline(time.Time{})
		if !pt.p.HostConnected() {
			continue
		}
		stop := context.AfterFunc(ctx, func() { f.ep.SetReadDeadline(past) })
		n, err = f.ep.Read(b)
		stop()
		if n > 0 {
			return n, 0
		}
		if ctx.Err() != nil {
			return 0, syscall.EINTR
		}
		if pt.unplugged() {
			return 0, syscall.ENODEV
		}
		if err != nil && !errors.Is(err, pump.ErrDeadline) {
			return readErr(err)
		}
	}
}

// readErr is what a read sees for an error of the endpoint.
func readErr(err error) (int, syscall.Errno) {
	switch {
	case errors.Is(err, driver.ErrPortRemoved), errors.Is(err, net.ErrClosed), errors.Is(err, driver.ErrClosed):
		return 0, syscall.ENODEV // Linux: unplugged while the read waited
	}
	return 0, syscall.EIO // a device reset lost host bytes, or worse
}

// Write is Linux's port_fops_write: it waits while the host is away or no
// transmit buffer is free (EAGAIN without blocking), then queues what fits
// and returns.
func (pt *Port) Write(ctx context.Context, r cuse.Request, b []byte) (int, syscall.Errno) {
	f := pt.fileFor(r.FH)
	if len(b) == 0 {
		return 0, 0
	}
	if f == nil || pt.unplugged() {
		return 0, syscall.ENODEV // Linux: the port is hot-unplugged
	}
	if !acquire(ctx, f.wsem) {
		return 0, syscall.EINTR
	}
	defer func() { <-f.wsem }()
	nonblock := r.Flags&unix.O_NONBLOCK != 0 || r.Offset > 0
	if nonblock {
		if !pt.p.HostConnected() {
			return pt.nonblockWrite(r)
		}
		f.ep.SetWriteDeadline(past)
		n, err := f.ep.Write(b)
		if n > 0 {
			return n, 0
		}
		if err != nil && !errors.Is(err, pump.ErrDeadline) {
			return writeErr(err)
		}
		f.ep.WatchAlso(pump.WatchWrite) // poll hears when to try again
		return pt.nonblockWrite(r)
	}
	for {
		f.ep.SetWriteDeadline(time.Time{})
		stop := context.AfterFunc(ctx, func() { f.ep.SetWriteDeadline(past) })
		n, err := f.ep.Write(b)
		stop()
		switch {
		case n > 0:
			return n, 0
		case ctx.Err() != nil:
			return 0, syscall.EINTR
		case pt.unplugged():
			return 0, syscall.ENODEV
		case errors.Is(err, pump.ErrDeadline):
			continue // a deadline left over from an interrupt that came late
		}
		return writeErr(err)
	}
}

// nonblockWrite is a write that would block: EAGAIN, or 0 for the later
// piece of a split write (the syscall returns what the first took).
func (pt *Port) nonblockWrite(r cuse.Request) (int, syscall.Errno) {
	if r.Offset > 0 {
		return 0, 0
	}
	return 0, syscall.EAGAIN
}

// writeErr is what a write sees for an error of the endpoint.
func writeErr(err error) (int, syscall.Errno) {
	switch {
	case err == nil:
		return 0, 0
	case errors.Is(err, driver.ErrPortRemoved), errors.Is(err, net.ErrClosed), errors.Is(err, driver.ErrClosed):
		return 0, syscall.ENODEV // Linux: the port got hot-unplugged
	}
	return 0, syscall.EIO
}

func acquire(ctx context.Context, sem chan struct{}) bool {
	select {
	case sem <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}

// Poll is Linux's port_fops_poll: POLLIN when a read would not block
// (bytes, or the host away), POLLOUT when a write would not, POLLHUP while
// the host is away or the port is gone.
func (pt *Port) Poll(r cuse.Request, kh uint64, schedule bool, events uint32) uint32 {
	f := pt.fileFor(r.FH)
	if f == nil {
		return unix.POLLHUP
	}
	var want int32
	if events&(unix.POLLIN|pollRdnorm) != 0 {
		want |= pump.WatchRead
	}
	if events&unix.POLLOUT != 0 {
		want |= pump.WatchWrite
	}
	if !schedule {
		return f.revents()
	}
	f.kh.Store(kh)
	f.hasKH.Store(true)
	// Watch before looking, then watch only for what is not there yet:
	// the kernel hears of changes, never of a state that stays (an
	// edge-triggered epoll would otherwise poll in a loop).
	f.ep.Watch(want)
	ev := f.revents()
	if ev&unix.POLLIN != 0 {
		want &^= pump.WatchRead
	}
	if ev&unix.POLLOUT != 0 {
		want &^= pump.WatchWrite
	}
	f.ep.Watch(want)
	return ev
}

// revents is what poll reports now.
func (f *file) revents() uint32 {
	p := f.pt.p
	if f.pt.unplugged() {
		return unix.POLLHUP
	}
	read, write := f.ep.Ready()
	host := p.HostConnected()
	var ev uint32
	if read || !host {
		ev |= unix.POLLIN | pollRdnorm
	}
	if write && host {
		ev |= unix.POLLOUT
	}
	if !host {
		ev |= unix.POLLHUP
	}
	return ev
}

// watch wakes the file's waiting read or write and its scheduled poll when
// the port changes (the host came or left, the port went) and its poll when
// the loop says the port became readable or writable.
func (f *file) watch() {
	defer guard.Recover()
	defer close(f.done)
	sig := f.ep.Watch(0)
	for {
		ch := f.pt.p.Changed()
		if f.pt.p.Removed() {
			ch = nil
		}
		select {
		case <-ch:
			// A waiting read looks again (the host may have left: end
			// of file). A waiting write goes on waiting, as Linux's.
			f.ep.SetReadDeadline(past)
		case <-sig:
		case <-f.stop:
			return
		}
		f.notify()
	}
}

// notify wakes the file's pollers, if the kernel polls it: the kernel
// then polls again.
func (f *file) notify() {
	if !f.hasKH.Load() {
		return
	}
	f.pt.mu.Lock()
	srv := f.pt.srv
	f.pt.mu.Unlock()
	if srv != nil {
		srv.NotifyPoll(f.kh.Load())
	}
}

// Ioctl: Linux's port has no ioctl (ENOTTY).
func (pt *Port) Ioctl(r cuse.Request, cmd uint32) syscall.Errno { return syscall.ENOTTY }

// Fsync: Linux's port has no fsync (EINVAL). The kernel answers it for a
// CUSE device itself; this is for the record.
func (pt *Port) Fsync(r cuse.Request) syscall.Errno { return syscall.EINVAL }

// Flush: nothing to do (Linux's port has no flush).
func (pt *Port) Flush(r cuse.Request) syscall.Errno { return 0 }

var _ cuse.Handler = (*Port)(nil)

// pollRdnorm is POLLRDNORM, which Linux's port reports with POLLIN.
const pollRdnorm = 0x40
