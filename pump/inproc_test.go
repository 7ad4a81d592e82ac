package pump

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/vserial/vserial/driver"
	"github.com/vserial/vserial/driver/virtiotest"
)

// hold attaches an in-process endpoint to port id, opened for the host as
// a socket client's port is.
func (r *rig) hold(id uint32) *Endpoint {
	r.t.Helper()
	p := r.port(id)
	if err := p.SetGuestOpen(r.ctx, true); err != nil {
		r.t.Fatal(err)
	}
	e, err := r.l.Attach(p)
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { e.Close() })
	return e
}

// result runs f in a goroutine and returns a channel with its error.
func result(f func() error) chan error {
	ch := make(chan error, 1)
	go func() { ch <- f() }()
	return ch
}

func waitErr(t *testing.T, ch chan error, what string) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(testTimeout):
		t.Fatalf("%s did not return", what)
	}
	return nil
}

func TestEndpointBytesBothWaysByteExact(t *testing.T) {
	for _, irq := range interrupts {
		t.Run(irq.name, func(t *testing.T) {
			r := newRig(t, rigOpts{vectors: irq.vectors})
			e := r.hold(1)
			for i, n := range []int{1, 4095, 4097, 100_000, 1 << 20, 3 << 20} {
				in := pattern(n, byte(i))
				got := make([]byte, n)
				read := result(func() error { _, err := io.ReadFull(e, got); return err })
				if err := r.m.HostWrite(1, in); err != nil {
					t.Fatal(err)
				}
				if err := waitErr(t, read, "Read"); err != nil {
					t.Fatalf("host→guest %d bytes: %v", n, err)
				}
				if !bytes.Equal(got, in) {
					t.Fatalf("host→guest %d bytes: not what the host sent", n)
				}
				out := pattern(n, byte(i+100))
				write := result(func() error {
					k, err := e.Write(out)
					if err == nil && k != n {
						err = errors.New("short write")
					}
					return err
				})
				back, err := r.m.HostReadFull(r.ctx, 1, n)
				if err != nil {
					t.Fatalf("guest→host %d bytes: %v", n, err)
				}
				if err := waitErr(t, write, "Write"); err != nil {
					t.Fatalf("guest→host %d bytes: %v", n, err)
				}
				if !bytes.Equal(back, out) {
					t.Fatalf("guest→host %d bytes: not what the endpoint wrote", n)
				}
			}
			if s := r.l.PortCounters(1); s["readv"] != 0 || s["writev"] != 0 || s["sessions"] != 1 {
				t.Errorf("an in-process client made system calls or sessions are off: %v", s)
			}
		})
	}
}

// TestEndpointRoundTripsNoLostWakeup runs many one-byte round trips with
// the host echoing: a wake-up lost between a Read's look and its wait
// (or a Write's) hangs one of them until the test times out.
//
// The fake host's echo is a goroutine, which a real device's reply is
// not: Write's kick readies it on the writer's P, and Read then spins on
// that P for the reply. With two Ps and the loop pinned in an ordinary
// epoll_wait (which keeps its P until sysmon takes it, up to 10 ms
// later), no P is idle to take the echo from under the spinning Read, so
// every spin missed in about half the runs without the race detector. A
// third P gives it one; a parked loop gives its own back.
func TestEndpointRoundTripsNoLostWakeup(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(max(3, runtime.GOMAXPROCS(0))))
	for _, w := range waits {
		for _, mode := range []string{"adaptive", "off"} {
			for _, irq := range interrupts {
				t.Run(w.name+"/"+mode+"/"+irq.name, func(t *testing.T) {
					testEndpointRoundTrips(t, rigOpts{vectors: irq.vectors, wait: w.mode}, mode)
				})
			}
		}
	}
}

func testEndpointRoundTrips(t *testing.T, o rigOpts, mode string) {
	poll, _ := ParsePoll(mode)
	o.poll = poll
	r := newRig(t, o)
	e := r.hold(1)
	ctx, cancel := context.WithCancel(r.ctx)
	defer cancel()
	go echoHost(ctx, r)
	var b [1]byte
	for i := range 2000 {
		e.SetDeadline(time.Now().Add(testTimeout))
		if _, err := e.Write([]byte{byte(i)}); err != nil {
			t.Fatalf("round trip %d: write: %v", i, err)
		}
		if _, err := e.Read(b[:]); err != nil {
			t.Fatalf("round trip %d: read: %v; loop %v; port %v; host pending %d, rx buffered %d pending %v", i, err, r.l.Counters(), r.l.PortCounters(1), r.m.HostPending(1), e.port.RxBuffered(), e.port.RxPending())
		}
		if b[0] != byte(i) {
			t.Fatalf("round trip %d: got %d", i, b[0])
		}
	}
	pc := r.l.PortCounters(1)
	spins := pc["spin_hits"] + pc["spin_misses"]
	if mode == "off" && spins != 0 {
		t.Errorf("--poll off spun %d times", spins)
	}
	if mode != "off" && pc["spin_hits"] == 0 {
		t.Errorf("--poll %s never caught a reply by spinning in 2000 round trips: %v", mode, pc)
	}
	// A reply far beyond any spin budget still wakes the
	// reader: the receive interrupt is on again before it
	// waits.
	cancel()
	time.Sleep(10 * time.Millisecond)
	if _, err := e.Write([]byte{1}); err != nil {
		t.Fatal(err)
	}
	go func() {
		time.Sleep(50 * time.Millisecond)
		if b, err := r.m.HostReadFull(r.ctx, 1, 1); err == nil {
			r.m.HostWrite(1, b)
		}
	}()
	e.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := e.Read(b[:]); err != nil || b[0] != 1 {
		t.Fatalf("late reply after spinning: %v %v", b[0], err)
	}
}

// TestEndpointNoLostWakeupBeforeWait lands host bytes, and lets the loop
// take them, in the window between a Read's look and its wait: only the
// wait announced before the look makes the loop wake the reader.
func TestEndpointNoLostWakeupBeforeWait(t *testing.T) {
	for _, irq := range interrupts {
		t.Run(irq.name, func(t *testing.T) {
			r := newRig(t, rigOpts{vectors: irq.vectors, poll: Poll{Mode: PollOff}})
			e := r.hold(1)
			landed := false
			hook := func(e *Endpoint) {
				if landed {
					return
				}
				landed = true
				// No wake-up left over from earlier passes.
				select {
				case <-e.rsig:
				default:
				}
				if err := r.m.HostWrite(1, []byte("w")); err != nil {
					t.Error(err)
				}
				for e.port.RxBuffered() == 0 {
					time.Sleep(time.Millisecond)
				}
				time.Sleep(20 * time.Millisecond) // the loop's pass ends
			}
			testHookReadWait.Store(&hook)
			defer testHookReadWait.Store(nil)
			e.SetReadDeadline(time.Now().Add(2 * time.Second))
			var b [1]byte
			if _, err := e.Read(b[:]); err != nil || b[0] != 'w' {
				t.Fatalf("read with bytes landed before its wait: %q, %v", b[:], err)
			}
		})
	}
}

// SetDeadline sets both deadlines (tests only; the conn in package vserial
// has its own).
func (e *Endpoint) SetDeadline(t time.Time) {
	e.SetReadDeadline(t)
	e.SetWriteDeadline(t)
}

func TestEndpointDeadlines(t *testing.T) {
	r := newRig(t, rigOpts{hostAway: true})
	e := r.hold(1)
	// A deadline in the past fails at once; so does one that passes while
	// the call waits.
	e.SetReadDeadline(time.Now().Add(-time.Second))
	if _, err := e.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read after deadline: %v", err)
	}
	e.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	start := time.Now()
	if _, err := e.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read until deadline: %v", err)
	}
	if d := time.Since(start); d < 40*time.Millisecond {
		t.Fatalf("read gave up after %v, before its deadline", d)
	}
	// The host is away: Write waits for it, and its deadline ends it
	// with nothing queued.
	e.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
	if n, err := e.Write([]byte("x")); n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("write while the host is away: %d, %v", n, err)
	}
	// A deadline set while a call waits takes effect at once, and clearing
	// it lets the call go on.
	e.SetReadDeadline(time.Time{})
	read := result(func() error { _, err := e.Read(make([]byte, 1)); return err })
	time.Sleep(20 * time.Millisecond)
	e.SetReadDeadline(time.Now())
	if err := waitErr(t, read, "Read"); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read whose deadline was moved: %v", err)
	}
	e.SetWriteDeadline(time.Time{})
	write := result(func() error { _, err := e.Write([]byte("late")); return err })
	time.Sleep(20 * time.Millisecond)
	if err := r.m.HostConnect(1, true); err != nil {
		t.Fatal(err)
	}
	if err := waitErr(t, write, "Write"); err != nil {
		t.Fatalf("write once the host came: %v", err)
	}
	if got, err := r.m.HostReadFull(r.ctx, 1, 4); err != nil || string(got) != "late" {
		t.Fatalf("host got %q, %v", got, err)
	}
}

func TestEndpointClose(t *testing.T) {
	r := newRig(t, rigOpts{})
	e := r.hold(1)
	// One client per port.
	if _, err := r.l.Attach(e.Port()); !errors.Is(err, ErrBusy) {
		t.Fatalf("second Attach: %v", err)
	}
	ours, theirs := socketPair(t)
	defer theirs.Close()
	if err := r.l.Serve(r.ctx, e.Port(), ours); !errors.Is(err, ErrBusy) {
		t.Fatalf("Serve of a held port: %v", err)
	}
	// Close ends a waiting Read and waits for what Write queued to reach
	// the device.
	read := result(func() error { _, err := e.Read(make([]byte, 1)); return err })
	r.m.SetQueueNotify(virtiotest.TxQueue(1), false)
	if _, err := e.Write([]byte("bye")); err != nil {
		t.Fatal(err)
	}
	closed := result(e.Close)
	time.Sleep(20 * time.Millisecond)
	select {
	case err := <-closed:
		t.Fatalf("Close returned before the device took the bytes: %v", err)
	default:
	}
	r.m.SetQueueNotify(virtiotest.TxQueue(1), true)
	r.m.Interrupt(virtiotest.TxQueue(1))
	r.m.Notify(virtiotest.TxQueue(1))
	if err := waitErr(t, closed, "Close"); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if got, err := r.m.HostReadFull(r.ctx, 1, 3); err != nil || string(got) != "bye" {
		t.Fatalf("host got %q, %v", got, err)
	}
	if err := waitErr(t, read, "Read"); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read across Close: %v", err)
	}
	if _, err := e.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write after Close: %v", err)
	}
	// A device that never takes the bytes holds Close only until the
	// write deadline.
	e4, err := r.l.Attach(e.Port())
	if err != nil {
		t.Fatal(err)
	}
	r.m.SetQueueNotify(virtiotest.TxQueue(1), false)
	if _, err := e4.Write([]byte("stuck")); err != nil {
		t.Fatal(err)
	}
	e4.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
	if err := e4.Close(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Close with bytes the device never takes: %v", err)
	}
	r.m.SetQueueNotify(virtiotest.TxQueue(1), true)
	r.m.Notify(virtiotest.TxQueue(1))
	if got, err := r.m.HostReadFull(r.ctx, 1, 5); err != nil || string(got) != "stuck" {
		t.Fatalf("host got %q, %v", got, err)
	}
	// The port is free again.
	e2, err := r.l.Attach(e.Port())
	if err != nil {
		t.Fatalf("Attach after Close: %v", err)
	}
	e2.Close()
	// A loop that closes ends its endpoints.
	e3, err := r.l.Attach(e.Port())
	if err != nil {
		t.Fatal(err)
	}
	read = result(func() error { _, err := e3.Read(make([]byte, 1)); return err })
	r.l.Close()
	if err := waitErr(t, read, "Read"); !errors.Is(err, ErrClosed) {
		t.Fatalf("read across the loop's Close: %v", err)
	}
	if err := e3.Close(); err != nil {
		t.Fatalf("Close after the loop closed: %v", err)
	}
}

func TestEndpointPortRemoved(t *testing.T) {
	r := newRig(t, rigOpts{})
	e := r.hold(1)
	read := result(func() error { _, err := e.Read(make([]byte, 1)); return err })
	time.Sleep(20 * time.Millisecond)
	if err := r.m.Unplug(1); err != nil {
		t.Fatal(err)
	}
	if err := waitErr(t, read, "Read"); !errors.Is(err, driver.ErrPortRemoved) {
		t.Fatalf("read across the port's removal: %v", err)
	}
	if _, err := e.Write([]byte("x")); !errors.Is(err, driver.ErrPortRemoved) {
		t.Fatalf("write after the port's removal: %v", err)
	}
}

// TestEndpointPathAllocatesNothing pins that a Write into free buffers and
// a Read of buffered bytes allocate nothing.
func TestEndpointPathAllocatesNothing(t *testing.T) {
	r := newRig(t, rigOpts{noRun: true})
	p := r.port(1)
	if err := p.SetGuestOpen(r.ctx, true); err != nil {
		t.Fatal(err)
	}
	e := newEndpoint(r.l, p)
	r.l.attach(e.c)
	// As in TestLoopPathAllocatesNothing: the fake's kick handling
	// allocates, so it sees no kicks while measuring.
	r.m.SetQueueNotify(virtiotest.TxQueue(1), false)
	one := []byte{7}
	if n := testing.AllocsPerRun(20, func() {
		if _, err := e.Write(one); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("Write: %v allocations", n)
	}
	r.m.SetQueueNotify(virtiotest.RxQueue(1), false)
	if err := r.m.HostWrite(1, make([]byte, 100*4096)); err != nil {
		t.Fatal(err)
	}
	r.l.pass() // takes the used buffers
	var sink [1000]byte
	if n := testing.AllocsPerRun(20, func() {
		if _, err := e.Read(sink[:]); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("Read: %v allocations", n)
	}
}
