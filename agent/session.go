package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vserial/vserial/internal/guard"
	"github.com/vserial/vserial/internal/rawio"
)

// closeTimeout bounds the PORT_OPEN 0 message sent when a session ends, so
// a dead device cannot hold Close forever.
const closeTimeout = 5 * time.Second

var (
	// errHostGone stops a read from the client because the host side of the
	// port is not connected: the bytes stay in the socket.
	errHostGone = errors.New("agent: host not connected")
	// errPortRemoved ends a session whose port the device removed.
	errPortRemoved = errors.New("agent: port removed")
)

// longAgo is a deadline in the past, to wake a blocked socket operation.
var longAgo = time.Unix(1, 0)

// session is one client connection of a port.
type session struct {
	pt     *port
	c      *net.UnixConn
	ctx    context.Context // ends the pumps
	cancel context.CancelFunc
	done   chan struct{} // closed when the session has let go of the port

	// fd is the client's descriptor while a data-plane loop serves it
	// (FDServer): c has then left the Go poller. -1 otherwise.
	fdMu sync.Mutex
	fd   int
}

func newSession(pt *port, c *net.UnixConn) *session {
	ctx, cancel := context.WithCancel(pt.ctx)
	return &session{pt: pt, c: c, ctx: ctx, cancel: cancel, done: make(chan struct{}), fd: -1}
}

// run opens the port for the client, pumps bytes both ways until the client
// leaves (or the port goes away, or the agent closes), then closes the port.
func (s *session) run() {
	defer guard.Recover()
	pt, p := s.pt, s.pt.p
	defer pt.a.wg.Done()
	defer s.cancel()
	// Ending the session's context wakes whatever socket call a pump is
	// blocked in.
	stop := context.AfterFunc(s.ctx, func() { s.c.SetDeadline(longAgo) })
	defer stop()

	raw, err := s.c.SyscallConn()
	pt.log.Info("client connected", peerAttrs(s.c)...)
	ev := pt.event(EventClientConnected)
	ev.PeerPID, ev.PeerUID = peerCred(s.c)
	pt.a.publish(ev)
	// A console's terminal gives the port to the client until it leaves.
	pt.detachConsole()
	defer pt.attachConsole()
	if err == nil {
		err = p.SetGuestOpen(s.ctx, true)
	}
	opened := err == nil
	if fs, ok := p.(FDServer); ok && opened {
		err = s.serveFD(fs)
	} else if opened {
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer guard.Recover()
			defer wg.Done()
			s.hostToGuest()
		}()
		err = s.guestToHost(raw)
		s.cancel()
		wg.Wait()
	} else {
		err = fmt.Errorf("open port: %w", err)
	}
	s.c.Close()
	if opened && !p.Removed() && !pt.hasConsole() {
		// (A console with a terminal stays open: the terminal takes over.)
		ctx, cancel := context.WithTimeout(context.WithoutCancel(s.ctx), closeTimeout)
		if cerr := p.SetGuestOpen(ctx, false); cerr != nil {
			pt.log.Warn("cannot tell the host the port closed", "err", cerr)
		}
		cancel()
	}
	why := s.why(err)
	a := pt.a
	a.mu.Lock()
	if pt.client == s {
		pt.client = nil
	}
	// Published under a.mu: a next client's client_connected comes after.
	ev = pt.eventLocked(EventClientDisconnected)
	ev.Reason = why
	a.publish(ev)
	a.mu.Unlock()
	close(s.done)
	pt.log.Info("client gone", "why", why)
}

// serveFD hands the client to the port's data-plane loop. The loop watches
// the descriptor in its own epoll set, so the connection leaves Go's poller
// first (a duplicate descriptor is kept, the connection closed): otherwise
// every client write would also wake the runtime's poller thread.
func (s *session) serveFD(fs FDServer) error {
	raw, err := s.c.SyscallConn()
	if err != nil {
		return err
	}
	fd, derr := -1, error(nil)
	if err := raw.Control(func(f uintptr) {
		fd, derr = unix.FcntlInt(f, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return err
	}
	if derr != nil {
		return os.NewSyscallError("dup", derr)
	}
	s.fdMu.Lock()
	s.fd = fd
	s.fdMu.Unlock()
	s.c.Close()
	err = fs.ServeFD(s.ctx, fd)
	s.fdMu.Lock()
	s.fd = -1
	unix.Close(fd)
	s.fdMu.Unlock()
	return err
}

// hungUp reports whether the session's client has closed its end with
// nothing left unread.
func (s *session) hungUp() bool {
	s.fdMu.Lock()
	defer s.fdMu.Unlock()
	if s.fd >= 0 {
		return peekHup(s.fd)
	}
	return hungUp(s.c)
}

// why turns the error that ended a session into words for the log.
func (s *session) why(err error) string {
	switch {
	case errors.Is(err, io.EOF):
		return "client closed"
	case s.pt.p.Removed() || errors.Is(err, errPortRemoved):
		return "port removed"
	case s.pt.a.ctx.Err() != nil:
		return "agent closing"
	case s.pt.ctx.Err() != nil:
		return "port dropped"
	}
	return err.Error()
}

// guestToHost moves client bytes to the device while the host is connected,
// and returns io.EOF once the client closed and everything it sent was taken
// by the device.
func (s *session) guestToHost(raw syscall.RawConn) error {
	p := s.pt.p
	r := newGatedReader(p, raw)
	for {
		hup, err := s.awaitHost(raw)
		if err != nil {
			return err
		}
		if !hup {
			_, err = p.Send(s.ctx, r)
			if err == nil || errors.Is(err, errHostGone) {
				continue
			}
			if !errors.Is(err, io.EOF) {
				return err
			}
		}
		if err := p.Flush(s.ctx); err != nil {
			return fmt.Errorf("flush: %w", err)
		}
		return io.EOF
	}
}

// awaitHost returns when the host side is connected, or with hup set when
// the client hung up with nothing left unread (its session can end even
// though the host is away).
func (s *session) awaitHost(raw syscall.RawConn) (hup bool, err error) {
	p := s.pt.p
	for {
		if p.HostConnected() {
			return false, nil
		}
		ch := p.Changed()
		if p.HostConnected() {
			return false, nil
		}
		if p.Removed() {
			return false, errPortRemoved
		}
		if err := s.ctx.Err(); err != nil {
			return false, err
		}
		hup, err := s.waitHangup(raw, ch)
		if hup || err != nil {
			return hup, err
		}
	}
}

// waitHangup waits, without reading, until ch is closed (false, nil) or the
// client hangs up with no bytes unread (true, nil).
func (s *session) waitHangup(raw syscall.RawConn, ch <-chan struct{}) (bool, error) {
	done, helperDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer guard.Recover()
		defer close(helperDone)
		select {
		case <-ch:
			s.c.SetReadDeadline(longAgo)
		case <-done:
		}
	}()
	var hup bool
	var perr error
	err := raw.Read(func(fd uintptr) bool {
		var b [1]byte
		n, _, e := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		switch {
		case e == unix.EAGAIN || e == unix.EINTR:
			return false
		case e != nil:
			perr = e
			return true
		case n == 0:
			hup = true
			return true
		}
		// Bytes are waiting for the host: sleep until the next socket event
		// (more bytes, or a hang-up).
		return false
	})
	close(done)
	<-helperDone
	switch {
	case hup:
		return true, nil
	case perr != nil:
		return false, os.NewSyscallError("recvfrom", perr)
	case errors.Is(err, os.ErrDeadlineExceeded):
		// Set by the helper (ch closed) or by the session's AfterFunc; the
		// second must win, so look at ctx after clearing.
		s.c.SetReadDeadline(time.Time{})
		return false, s.ctx.Err()
	}
	return false, err
}

// gatedReader reads from the client only while the host is connected. It
// checks the host state immediately before each read(2), including after
// waiting for the socket to become readable, so bytes that arrive after the
// host left stay in the socket.
type gatedReader struct {
	p   Port
	raw syscall.RawConn
	fn  func(fd uintptr) bool // r.tryRead, bound once so Read does not allocate

	// Arguments and results of tryRead.
	b    []byte
	bufs [][]byte // vectored read (ReadBuffers) when not nil
	iov  rawio.Iovecs
	n    int
	rerr error
	gone bool
}

func newGatedReader(p Port, raw syscall.RawConn) *gatedReader {
	r := &gatedReader{p: p, raw: raw}
	r.fn = r.tryRead
	return r
}

// tryRead is called by the poller each time the socket may be readable; it
// returns false to wait for the next readiness event.
func (r *gatedReader) tryRead(fd uintptr) bool {
	if !r.p.HostConnected() {
		r.gone = true
		return true
	}
	for {
		var errno unix.Errno
		if r.bufs != nil {
			r.n, errno = r.iov.Readv(int(fd), r.bufs)
		} else {
			r.n, errno = rawio.Read(int(fd), r.b)
		}
		r.rerr = nil
		if errno != 0 {
			r.n, r.rerr = 0, errno
		}
		if errno != unix.EINTR {
			break
		}
	}
	return r.rerr != unix.EAGAIN
}

// ReadBuffers is Read into several buffers with one readv(2), so that one
// Send fills every free transmit buffer (driver.BuffersReader).
func (r *gatedReader) ReadBuffers(bufs [][]byte) (int, error) {
	if len(bufs) == 0 {
		return 0, nil
	}
	r.bufs = bufs
	n, err := r.Read(bufs[0])
	r.bufs = nil
	return n, err
}

func (r *gatedReader) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	r.b, r.n, r.rerr, r.gone = b, 0, nil, false
	err := r.raw.Read(r.fn)
	r.b = nil
	switch {
	case r.gone:
		return 0, errHostGone
	case err != nil:
		return 0, err
	case r.rerr != nil:
		return 0, os.NewSyscallError("read", r.rerr)
	case r.n <= 0:
		return 0, io.EOF
	}
	return r.n, nil
}

// hostToGuest hands host bytes to the client until the session ends or the
// client stops taking them.
func (s *session) hostToGuest() {
	w := &connWriter{c: s.c}
	for {
		_, err := s.pt.p.Recv(s.ctx, w)
		if w.err != nil || err != nil {
			return
		}
	}
}

// connWriter remembers the first write error, which tells the pump the
// client is gone.
type connWriter struct {
	c   *net.UnixConn
	err error

	// WriteBuffers state, kept between calls so they do not allocate.
	raw  syscall.RawConn
	fn   func(fd uintptr) bool // w.tryWrite
	vec  [][]byte
	left [][]byte
	iov  rawio.Iovecs
	done int
	werr error
}

// WriteBuffers writes several buffers with writev(2) (as few calls as the
// socket allows), so that one Recv hands over every received buffer
// (driver.BuffersWriter).
func (w *connWriter) WriteBuffers(bufs [][]byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	if w.raw == nil {
		raw, err := w.c.SyscallConn()
		if err != nil {
			w.err = err
			return 0, err
		}
		w.raw, w.fn = raw, w.tryWrite
	}
	// The headers are consumed as bytes go out: work on a copy.
	w.vec = append(w.vec[:0], bufs...)
	w.left, w.done, w.werr = w.vec, 0, nil
	err := w.raw.Write(w.fn)
	clear(w.vec) // no references to device memory after the call
	w.left = nil
	if err == nil {
		err = w.werr
	}
	if err != nil {
		w.err = err
	}
	return w.done, err
}

// tryWrite writes what is left of a WriteBuffers call; it returns false to
// wait until the socket is writable again.
func (w *connWriter) tryWrite(fd uintptr) bool {
	for len(w.left) > 0 {
		n, errno := w.iov.Writev(int(fd), w.left)
		switch errno {
		case 0:
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		default:
			w.werr = os.NewSyscallError("writev", errno)
			return true
		}
		w.done += n
		for n > 0 && len(w.left) > 0 {
			k := min(n, len(w.left[0]))
			w.left[0] = w.left[0][k:]
			n -= k
			if len(w.left[0]) == 0 {
				w.left = w.left[1:]
			}
		}
	}
	return true
}

func (w *connWriter) Write(b []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	n, err := w.c.Write(b)
	if err != nil {
		w.err = err
	}
	return n, err
}

// peerAttrs returns the client's process credentials as log attributes,
// or nothing if the kernel does not say.
func peerAttrs(c *net.UnixConn) []any {
	pid, uid := peerCred(c)
	if pid == nil {
		return nil
	}
	return []any{"peer_pid", *pid, "peer_uid", *uid}
}

// peerCred returns the client's pid and uid (SO_PEERCRED), or nils if the
// kernel does not say.
func peerCred(c *net.UnixConn) (pid *int32, uid *uint32) {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, nil
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil || cerr != nil {
		return nil, nil
	}
	return &cred.Pid, &cred.Uid
}
