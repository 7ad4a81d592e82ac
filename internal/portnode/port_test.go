package portnode

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"os"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vserial/vserial/cuse"
	"github.com/vserial/vserial/driver"
	"github.com/vserial/vserial/driver/drivertest"
	"github.com/vserial/vserial/driver/virtiotest"
	"github.com/vserial/vserial/pump"
)

const patience = 20 * time.Second

// rig is a device on the QEMU-like fake with its loop: port 1 ("p",
// host connected) and console port 2 ("con").
type rig struct {
	t   *testing.T
	m   *virtiotest.Console
	d   *driver.Device
	l   *pump.Loop
	ctx context.Context
}

func newRig(t *testing.T) *rig {
	t.Helper()
	m := virtiotest.NewConsole(virtiotest.ConsoleConfig{})
	if err := m.Plug(1, "p", false); err != nil {
		t.Fatal(err)
	}
	if err := m.HostConnect(1, true); err != nil {
		t.Fatal(err)
	}
	if err := m.Plug(2, "con", true); err != nil {
		t.Fatal(err)
	}
	f, err := virtiotest.New(m, virtiotest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	t.Cleanup(cancel)
	if _, err := f.IRQ().PollFDs(); err != nil {
		t.Fatal(err)
	}
	d, err := driver.Open(ctx, drivertest.Function(f), driver.Config{ExternalLoop: true})
	if err != nil {
		t.Fatal(err)
	}
	l, err := pump.New(d, pump.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		l.Close()
		if err := d.Close(); err != nil {
			t.Errorf("device close: %v", err)
		}
		f.Close()
	})
	return &rig{t: t, m: m, d: d, l: l, ctx: ctx}
}

// port is the shared port of id, once the device named it.
func (r *rig) port(id uint32) *Port {
	r.t.Helper()
	for {
		if p := r.d.Port(id); p != nil && p.Name() != "" {
			return NewPort(p, r.l, nil)
		}
		select {
		case <-r.ctx.Done():
			r.t.Fatalf("port %d never appeared", id)
		case <-time.After(time.Millisecond):
		}
	}
}

func (r *rig) waitGuest(id uint32, open bool) {
	r.t.Helper()
	if err := r.m.WaitFor(r.ctx, func() bool { return r.m.GuestConnected(id) == open }); err != nil {
		r.t.Fatalf("the host never saw PORT_OPEN %v: %v", open, err)
	}
}

// release is the node's last close, waited for (PORT_OPEN 0 and the
// endpoint's close run after the call returns).
func (r *rig) release(pt *Port, fh uint64) {
	r.t.Helper()
	pt.Release(cuse.Request{FH: fh})
	pt.awaitClose(r.ctx)
}

func (r *rig) open(pt *Port, flags uint32) uint64 {
	r.t.Helper()
	fh, e := pt.Open(r.ctx, cuse.Request{Flags: flags})
	if e != 0 {
		r.t.Fatalf("open: %v", e)
	}
	return fh
}

// The node's open, read, write and release, against Linux's port_fops,
// and the one holder shared with the socket side.
func TestOpenReadWriteRelease(t *testing.T) {
	r := newRig(t)
	pt := r.port(1)
	fh := r.open(pt, unix.O_RDWR)
	r.waitGuest(1, true)
	if _, e := pt.Open(r.ctx, cuse.Request{}); e != syscall.EBUSY {
		t.Fatalf("second open: %v, want EBUSY", e)
	}
	if err := pt.SetGuestOpen(r.ctx, true); !errors.Is(err, ErrHeldByNode) {
		t.Fatalf("socket open while the node is held: %v, want ErrHeldByNode", err)
	}
	b := make([]byte, 64)
	nb := cuse.Request{FH: fh, Flags: unix.O_NONBLOCK}
	if n, e := pt.Read(r.ctx, nb, b); n != 0 || e != syscall.EAGAIN {
		t.Fatalf("non-blocking read with nothing buffered: %d %v, want EAGAIN", n, e)
	}
	if ev := pt.Poll(cuse.Request{FH: fh}, 1, false, unix.POLLIN|unix.POLLOUT); ev != unix.POLLOUT {
		t.Fatalf("poll: %#x, want POLLOUT", ev)
	}
	if err := r.m.HostWrite(1, []byte("from the host")); err != nil {
		t.Fatal(err)
	}
	n, e := pt.Read(r.ctx, cuse.Request{FH: fh}, b)
	if e != 0 || string(b[:n]) != "from the host" {
		t.Fatalf("read: %q %v", b[:n], e)
	}
	msg := bytes.Repeat([]byte("guest→host "), 1000)
	if n, e := pt.Write(r.ctx, cuse.Request{FH: fh}, msg); n != len(msg) || e != 0 {
		t.Fatalf("write: %d %v", n, e)
	}
	got, err := r.m.HostReadFull(r.ctx, 1, len(msg))
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("host got %d bytes (%v)", len(got), err)
	}
	pt.Release(cuse.Request{FH: fh})
	r.waitGuest(1, false)
	pt.awaitClose(r.ctx)
	// The socket side may have it now, and the node is then busy.
	if err := pt.SetGuestOpen(r.ctx, true); err != nil {
		t.Fatalf("socket open after the node's release: %v", err)
	}
	if _, e := pt.Open(r.ctx, cuse.Request{}); e != syscall.EBUSY {
		t.Fatalf("node open while the socket holds the port: %v, want EBUSY", e)
	}
	if err := pt.SetGuestOpen(r.ctx, false); err != nil {
		t.Fatal(err)
	}
	fh = r.open(pt, unix.O_RDWR)
	r.release(pt, fh)
}

// A console port refuses the node (ENXIO), as Linux's does.
func TestConsoleENXIO(t *testing.T) {
	r := newRig(t)
	if _, e := r.port(2).Open(r.ctx, cuse.Request{}); e != syscall.ENXIO {
		t.Fatalf("open of a console port: %v, want ENXIO", e)
	}
}

// A read that waits ends with EINTR when its request is interrupted, and
// the next read works; a read waiting when the host leaves returns 0 (end
// of file), and so does every read while the host is away.
func TestReadInterruptAndEOF(t *testing.T) {
	r := newRig(t)
	pt := r.port(1)
	fh := r.open(pt, unix.O_RDWR)
	defer r.release(pt, fh)
	type res struct {
		n int
		e syscall.Errno
	}
	read := func(ctx context.Context) chan res {
		c := make(chan res, 1)
		go func() {
			n, e := pt.Read(ctx, cuse.Request{FH: fh}, make([]byte, 16))
			c <- res{n, e}
		}()
		return c
	}
	ctx, cancel := context.WithCancel(r.ctx)
	c := read(ctx)
	select {
	case x := <-c:
		t.Fatalf("read returned %+v with nothing to read", x)
	case <-time.After(100 * time.Millisecond):
	}
	cancel()
	if x := <-c; x.n != 0 || x.e != syscall.EINTR {
		t.Fatalf("interrupted read: %+v, want EINTR", x)
	}
	c = read(r.ctx)
	time.Sleep(50 * time.Millisecond)
	if err := r.m.HostWrite(1, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if x := <-c; x.n != 1 || x.e != 0 {
		t.Fatalf("read after the interrupt: %+v", x)
	}
	c = read(r.ctx)
	time.Sleep(50 * time.Millisecond)
	if err := r.m.HostConnect(1, false); err != nil {
		t.Fatal(err)
	}
	select {
	case x := <-c:
		if x.n != 0 || x.e != 0 {
			t.Fatalf("read waiting when the host left: %+v, want 0 (end of file)", x)
		}
	case <-time.After(patience):
		t.Fatal("a waiting read did not end when the host left")
	}
	if n, e := pt.Read(r.ctx, cuse.Request{FH: fh, Flags: unix.O_NONBLOCK}, make([]byte, 4)); n != 0 || e != 0 {
		t.Fatalf("non-blocking read while the host is away: %d %v, want 0", n, e)
	}
	want := uint32(unix.POLLIN | pollRdnorm | unix.POLLHUP)
	if ev := pt.Poll(cuse.Request{FH: fh}, 1, false, unix.POLLIN|unix.POLLOUT); ev != want {
		t.Fatalf("poll while the host is away: %#x, want %#x", ev, want)
	}
	if n, e := pt.Write(r.ctx, cuse.Request{FH: fh, Flags: unix.O_NONBLOCK}, []byte("x")); n != 0 || e != syscall.EAGAIN {
		t.Fatalf("non-blocking write while the host is away: %d %v, want EAGAIN", n, e)
	}
}

func TestValidLinkName(t *testing.T) {
	for name, ok := range map[string]bool{
		"org.qemu.guest_agent.0": true, "a b": true, "": true,
		".": false, "..": false, "a/b": false, "x\n": false, string(bytes.Repeat([]byte("a"), 256)): false,
	} {
		if name == "" {
			continue
		}
		if validLinkName(name) != ok {
			t.Errorf("validLinkName(%q) = %v", name, !ok)
		}
	}
}

// After a poll asked for notifications, a non-blocking read that found
// nothing (EAGAIN) is followed by FUSE_NOTIFY_POLL once bytes arrive: an
// edge-triggered epoll (Go's poller) hears when to read again.
func TestPollNotifyAfterEAGAIN(t *testing.T) {
	r := newRig(t)
	pt := r.port(1)
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[1])
	srv, err := cuse.NewServer(os.NewFile(uintptr(fds[0]), "fake-cuse"), cuse.Config{Name: "t"}, pt)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	pt.mu.Lock()
	pt.srv = srv
	pt.mu.Unlock()
	fh := r.open(pt, unix.O_RDWR)
	defer r.release(pt, fh)
	const kh = 0xabcdef
	// The poll finds bytes: it watches for nothing more.
	if err := r.m.HostWrite(1, []byte("first")); err != nil {
		t.Fatal(err)
	}
	want := uint32(unix.POLLIN | pollRdnorm | unix.POLLOUT)
	for ev := uint32(0); ev != want; {
		ev = pt.Poll(cuse.Request{FH: fh}, kh, true, unix.POLLIN|unix.POLLOUT)
		if r.ctx.Err() != nil {
			t.Fatalf("poll: %#x, want %#x", ev, want)
		}
	}
	nb := cuse.Request{FH: fh, Flags: unix.O_NONBLOCK}
	if n, e := pt.Read(r.ctx, nb, make([]byte, 8)); n != 5 || e != 0 {
		t.Fatalf("non-blocking read: %d %v", n, e)
	}
	if n, e := pt.Read(r.ctx, nb, make([]byte, 8)); n != 0 || e != syscall.EAGAIN {
		t.Fatalf("non-blocking read: %d %v", n, e)
	}
	drain(fds[1]) // notifications sent meanwhile
	if err := r.m.HostWrite(1, []byte("wake")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 64)
	pfd := []unix.PollFd{{Fd: int32(fds[1]), Events: unix.POLLIN}}
	if n, _ := unix.Poll(pfd, int(patience.Milliseconds())); n != 1 {
		t.Fatal("no FUSE_NOTIFY_POLL after bytes arrived")
	}
	n, err := unix.Read(fds[1], b)
	if err != nil || n != 24 || int32(binary.LittleEndian.Uint32(b[4:])) != 1 || binary.LittleEndian.Uint64(b[16:]) != kh {
		t.Fatalf("notification % x (%v), want FUSE_NOTIFY_POLL for kh %#x", b[:n], err, kh)
	}
}

// drain reads whatever is queued on fd without waiting.
func drain(fd int) {
	b := make([]byte, 64)
	for {
		if n, _, err := unix.Recvfrom(fd, b, unix.MSG_DONTWAIT); n <= 0 || err != nil {
			return
		}
	}
}

// A port unplugged under the open file: reads and writes fail with
// ENODEV, blocking or not, and poll says POLLHUP, as Linux's
// port_fops_read and wait_port_writable do.
func TestUnpluggedENODEV(t *testing.T) {
	r := newRig(t)
	pt := r.port(1)
	fh := r.open(pt, unix.O_RDWR)
	defer r.release(pt, fh)
	if err := r.m.Unplug(1); err != nil {
		t.Fatal(err)
	}
	for !pt.p.Removed() {
		if r.ctx.Err() != nil {
			t.Fatal("the driver never removed the port")
		}
		time.Sleep(time.Millisecond)
	}
	for _, flags := range []uint32{0, unix.O_NONBLOCK} {
		q := cuse.Request{FH: fh, Flags: flags}
		if n, e := pt.Read(r.ctx, q, make([]byte, 8)); n != 0 || e != syscall.ENODEV {
			t.Errorf("read (flags %#x) after the unplug: %d %v, want ENODEV", flags, n, e)
		}
		if n, e := pt.Write(r.ctx, q, []byte("x")); n != 0 || e != syscall.ENODEV {
			t.Errorf("write (flags %#x) after the unplug: %d %v, want ENODEV", flags, n, e)
		}
	}
	if ev := pt.Poll(cuse.Request{FH: fh}, 1, false, unix.POLLIN|unix.POLLOUT); ev != unix.POLLHUP {
		t.Errorf("poll after the unplug: %#x, want POLLHUP", ev)
	}
}

// Stopping the agent with a node held open: the holder hears, as of an
// unplug, that the port is gone (its waiting read ends with ENODEV, poll
// says POLLHUP, a new open gets ENXIO) and Close waits, within closeGrace,
// for it to close the node.
func TestCloseTellsTheHolderFirst(t *testing.T) {
	r := newRig(t)
	d := NewDevice(Config{Index: 0})
	pt := d.Add(r.d.Port(1), r.l)
	for pt.p.Name() == "" {
		if r.ctx.Err() != nil {
			t.Fatal("port 1 was never named")
		}
		time.Sleep(time.Millisecond)
	}
	fh := r.open(pt, unix.O_RDWR)
	readErr := make(chan syscall.Errno, 1)
	released := make(chan time.Time, 1)
	go func() {
		_, e := pt.Read(r.ctx, cuse.Request{FH: fh}, make([]byte, 8)) // waits: the host sends nothing
		readErr <- e
		if ev := pt.Poll(cuse.Request{FH: fh}, 1, false, unix.POLLIN); ev != unix.POLLHUP {
			t.Errorf("poll while stopping: %#x, want POLLHUP", ev)
		}
		if _, e := pt.Write(r.ctx, cuse.Request{FH: fh}, []byte("x")); e != syscall.ENODEV {
			t.Errorf("write while stopping: %v, want ENODEV", e)
		}
		pt.Release(cuse.Request{FH: fh}) // the holder lets go, as qemu-ga does on ENODEV
		released <- time.Now()
	}()
	time.Sleep(50 * time.Millisecond) // let the read wait
	start := time.Now()
	d.Close()
	took := time.Since(start)
	select {
	case e := <-readErr:
		if e != syscall.ENODEV {
			t.Errorf("waiting read when the agent stops: %v, want ENODEV", e)
		}
	default:
		t.Fatal("Close returned with the holder's read still waiting")
	}
	at := <-released
	if at.After(start.Add(took)) {
		t.Error("Close returned before the holder released the node")
	}
	if took >= closeGrace {
		t.Errorf("Close took %v although the holder let go at once", took)
	}
	if _, e := pt.Open(r.ctx, cuse.Request{}); e != syscall.ENXIO {
		t.Errorf("open after Close: %v, want ENXIO", e)
	}
	r.waitGuest(1, false)
}

// A holder that never lets go costs Close closeGrace, no more.
func TestCloseGraceIsBounded(t *testing.T) {
	r := newRig(t)
	d := NewDevice(Config{Index: 0})
	pt := d.Add(r.d.Port(1), r.l)
	for pt.p.Name() == "" {
		time.Sleep(time.Millisecond)
	}
	r.open(pt, unix.O_RDWR)
	start := time.Now()
	d.Close()
	if took := time.Since(start); took < closeGrace || took > closeGrace+5*time.Second {
		t.Errorf("Close with a node nobody closes took %v, want about %v", took, closeGrace)
	}
}
