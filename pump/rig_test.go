package pump

import (
	"context"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vserial/vserial/dma"
	"github.com/vserial/vserial/driver"
	"github.com/vserial/vserial/driver/virtiotest"
)

// testTimeout bounds every wait so a broken loop fails instead of hanging;
// it is not a performance assertion.
const testTimeout = 20 * time.Second

// fakeFunction adapts *virtiotest.Function to driver.Function.
type fakeFunction struct{ f *virtiotest.Function }

func (a fakeFunction) Config() driver.ConfigSpace { return a.f.Config() }
func (a fakeFunction) BAR(i int) (driver.BAR, error) {
	b, err := a.f.BAR(i)
	if err != nil {
		return nil, err
	}
	return b, nil
}
func (a fakeFunction) IRQ() driver.IRQ    { return a.f.IRQ() }
func (a fakeFunction) DMA() dma.Allocator { return a.f.DMA() }
func (a fakeFunction) IOMMU() bool        { return a.f.IOMMU() }

// rig is a device on the QEMU-like fake with a loop, port 1 ("p") plugged
// and its host side connected unless hostAway.
type rig struct {
	t   *testing.T
	m   *virtiotest.Console
	f   *virtiotest.Function
	d   *driver.Device
	l   *Loop
	ctx context.Context

	noRun bool
}

type rigOpts struct {
	vectors  int // MSI-X vectors, 0: INTx
	hostAway bool
	poll     Poll
	noRun    bool // the test drives the loop by hand
	ports    int  // ports plugged (ids 1..ports), default 1
	wait     waitMode
}

// waits are the loop's two ways of sleeping (wait.go); a rig parks unless
// told otherwise.
var waits = []struct {
	name string
	mode waitMode
}{{"park", waitPark}, {"pinned", waitRaw}}

func newRig(t *testing.T, o rigOpts) *rig {
	t.Helper()
	m := virtiotest.NewConsole(virtiotest.ConsoleConfig{})
	if o.ports == 0 {
		o.ports = 1
	}
	for id := uint32(1); id <= uint32(o.ports); id++ {
		name := "p"
		if id > 1 {
			name = "p" + string(rune('0'+id))
		}
		if err := m.Plug(id, name, false); err != nil {
			t.Fatal(err)
		}
		if !o.hostAway {
			if err := m.HostConnect(id, true); err != nil {
				t.Fatal(err)
			}
		}
	}
	f, err := virtiotest.New(m, virtiotest.Options{MSIXVectors: o.vectors})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	fn := fakeFunction{f}
	// As cmd does: the descriptors are taken before bring-up.
	if _, err := f.IRQ().PollFDs(); err != nil {
		t.Fatal(err)
	}
	d, err := driver.Open(ctx, fn, driver.Config{ExternalLoop: true})
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{t: t, m: m, f: f, d: d, ctx: ctx, noRun: o.noRun}
	if o.wait == waitAuto {
		o.wait = waitPark
	}
	if o.noRun {
		r.l, err = newLoop(d, Options{Poll: o.poll, wait: o.wait})
	} else {
		r.l, err = New(d, Options{Poll: o.poll, wait: o.wait})
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if !o.noRun {
			r.l.Close()
		} else {
			r.l.closeFDs()
		}
		if err := d.Close(); err != nil {
			t.Errorf("device close: %v", err)
		}
		for _, v := range f.Violations() {
			t.Errorf("device saw: %v", v)
		}
		f.Close()
		if n, b := f.Heap().Live(); n != 0 {
			t.Errorf("after Close %d allocations (%d bytes) still live", n, b)
		}
	})
	return r
}

// port waits for port id to exist and be named.
func (r *rig) port(id uint32) *driver.Port {
	r.t.Helper()
	for {
		if p := r.d.Port(id); p != nil && p.Name() != "" {
			return p
		}
		if r.noRun {
			// Nobody else services the device.
			r.d.HandleIRQ(^uint64(0))
			r.d.Arm(true)
		}
		select {
		case <-r.ctx.Done():
			r.t.Fatalf("port %d never appeared", id)
		case <-time.After(time.Millisecond):
		}
	}
}

// session is a client attached to a port through Serve: conn is the
// client's end of a socket pair.
type session struct {
	conn net.Conn
	fd   int // the loop's end
	done chan error
	stop context.CancelFunc
}

// attach opens port id for a client (PORT_OPEN 1, as the agent does) and
// serves it on one end of a socket pair.
// settle waits until the loop sleeps without a deadline: its count of
// sleeps holds still for longer than a timed raw wait (rawWaitMax) lasts.
func (r *rig) settle() {
	r.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	last := r.l.stats.sleeps.Load()
	for time.Now().Before(deadline) {
		time.Sleep(6 * rawWaitMax * time.Millisecond)
		now := r.l.stats.sleeps.Load()
		if now == last && now > 0 {
			return
		}
		last = now
	}
	r.t.Fatalf("the loop never settled asleep (sleeps still counting: %d)", last)
}

func (r *rig) attach(id uint32) *session {
	r.t.Helper()
	p := r.port(id)
	if err := p.SetGuestOpen(r.ctx, true); err != nil {
		r.t.Fatal(err)
	}
	if err := r.m.WaitFor(r.ctx, func() bool { return r.m.GuestConnected(id) }); err != nil {
		r.t.Fatal(err)
	}
	ours, theirs := socketPair(r.t)
	ctx, cancel := context.WithCancel(r.ctx)
	s := &session{conn: theirs, fd: ours, done: make(chan error, 1), stop: cancel}
	go func() { s.done <- r.l.Serve(ctx, p, ours) }()
	r.t.Cleanup(func() {
		cancel()
		<-s.done
		unix.Close(ours)
		theirs.Close()
	})
	return s
}

// socketPair returns a non-blocking descriptor for the loop and a net.Conn
// for the client.
func socketPair(t *testing.T) (int, net.Conn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fds[1]), "client")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	return fds[0], c
}

// wait waits for Serve's answer.
func (s *session) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-s.done:
		s.done <- err // for Cleanup
		return err
	case <-time.After(testTimeout):
		t.Fatal("Serve did not return")
	}
	return nil
}

// readFull reads n bytes from the client's end.
func readFull(t *testing.T, c net.Conn, n int) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(testTimeout))
	b := make([]byte, n)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatalf("client read %d bytes: %v", n, err)
	}
	return b
}

// pattern is n bytes of a repeating, seed-dependent pattern.
func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7) + seed
	}
	return b
}
