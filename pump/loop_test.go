package pump

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vserial/vserial/driver"
	"github.com/vserial/vserial/driver/virtiotest"
	"github.com/vserial/vserial/internal/rawio"
)

// interrupts are the two interrupt kinds the loop handles differently:
// INTx (masked from the interrupt until Arm, ISR read) and MSI-X.
var interrupts = []struct {
	name    string
	vectors int
}{{"intx", 0}, {"msix", 2}}

func TestBytesBothWaysByteExact(t *testing.T) {
	for _, irq := range interrupts {
		t.Run(irq.name, func(t *testing.T) {
			r := newRig(t, rigOpts{vectors: irq.vectors})
			s := r.attach(1)
			for i, n := range []int{1, 4095, 4097, 100_000, 1 << 20} {
				in := pattern(n, byte(i))
				if err := r.m.HostWrite(1, in); err != nil {
					t.Fatal(err)
				}
				if got := readFull(t, s.conn, n); !bytes.Equal(got, in) {
					t.Fatalf("host→guest %d bytes: not what the host sent", n)
				}
				out := pattern(n, byte(i+100))
				go s.conn.Write(out)
				got, err := r.m.HostReadFull(r.ctx, 1, n)
				if err != nil {
					t.Fatalf("guest→host %d bytes: %v", n, err)
				}
				if !bytes.Equal(got, out) {
					t.Fatalf("guest→host %d bytes: not what the client sent", n)
				}
			}
		})
	}
}

// echoHost answers every byte the guest sends on port 1 with the same
// byte, until ctx ends.
func echoHost(ctx context.Context, r *rig) {
	for {
		b, err := r.m.HostReadFull(ctx, 1, 1)
		if err != nil {
			return
		}
		r.m.HostWrite(1, b)
	}
}

func TestRoundTripsEveryPollMode(t *testing.T) {
	for _, mode := range []string{"adaptive", "off", "300us"} {
		for _, irq := range interrupts {
			t.Run(mode+"/"+irq.name, func(t *testing.T) {
				poll, err := ParsePoll(mode)
				if err != nil {
					t.Fatal(err)
				}
				r := newRig(t, rigOpts{vectors: irq.vectors, poll: poll})
				s := r.attach(1)
				ctx, cancel := context.WithCancel(r.ctx)
				defer cancel()
				go echoHost(ctx, r)
				for i := range 300 {
					b := []byte{byte(i)}
					if _, err := s.conn.Write(b); err != nil {
						t.Fatal(err)
					}
					if got := readFull(t, s.conn, 1); got[0] != b[0] {
						t.Fatalf("round trip %d: got %d, want %d", i, got[0], b[0])
					}
				}
				c := r.l.Counters()
				spins := c["spin_hits"] + c["spin_misses"]
				if mode == "off" && spins != 0 {
					t.Errorf("--poll off spun %d times", spins)
				}
				if mode != "off" && spins == 0 {
					t.Errorf("--poll %s never spun in 300 round trips: %v", mode, c)
				}
				pc := r.l.PortCounters(1)
				if pc["sends"] < 300 || pc["readv"] < 300 || pc["writev"] < 300 {
					t.Errorf("port counters below one per round trip: %v", pc)
				}
			})
		}
	}
}

// TestNoLostWakeupBeforeSleep lands host bytes in the window between the
// loop's last pass and its sleep, where data interrupts are off: only the
// re-check in Arm finds them. The mutant that ignores Arm's answer must
// sleep through them (no interrupt will come), which shows the test can
// fail.
func TestNoLostWakeupBeforeSleep(t *testing.T) {
	for _, w := range waits {
		for _, irq := range interrupts {
			for _, mutant := range []bool{false, true} {
				t.Run(fmt.Sprintf("%s/%s/mutant=%v", w.name, irq.name, mutant), func(t *testing.T) {
					testNoLostWakeupBeforeSleep(t, rigOpts{vectors: irq.vectors, poll: Poll{Mode: PollOff}, wait: w.mode}, mutant)
				})
			}
		}
	}
}

func testNoLostWakeupBeforeSleep(t *testing.T, o rigOpts, mutant bool) {
	r := newRig(t, o)
	s := r.attach(1)
	// Let the loop settle asleep, with no deadline that would wake it.
	r.settle()
	var once sync.Once
	inject := make(chan struct{})
	hook := func() {
		select {
		case <-inject:
			once.Do(func() {
				if err := r.m.HostWrite(1, []byte("late")); err != nil {
					t.Error(err)
				}
			})
		default:
		}
	}
	testHookBeforeArm.Store(&hook)
	testIgnoreArm.Store(mutant)
	t.Cleanup(func() { testHookBeforeArm.Store(nil); testIgnoreArm.Store(false) })
	close(inject)
	// Wake the loop with something that is not device data, so
	// its next sleep goes through the hook.
	r.l.wake()
	s.conn.SetReadDeadline(time.Now().Add(time.Second))
	b := make([]byte, 4)
	_, err := io.ReadFull(s.conn, b)
	switch {
	case !mutant && err != nil:
		t.Fatalf("bytes that arrived before the sleep were not delivered: %v", err)
	case !mutant && string(b) != "late":
		t.Fatalf("got %q, want %q", b, "late")
	case mutant && err == nil:
		t.Fatalf("the mutant (Arm ignored) delivered %q: the test cannot tell a lost wake-up", b)
	}
	testIgnoreArm.Store(false)
	if mutant {
		// Any later wake-up delivers them.
		r.l.wake()
		if got := readFull(t, s.conn, 4); string(got) != "late" {
			t.Fatalf("after the next wake-up: %q", got)
		}
	}
}

func TestHostGatingAndHangups(t *testing.T) {
	t.Run("bytes wait in the socket while the host is away", func(t *testing.T) {
		r := newRig(t, rigOpts{hostAway: true})
		s := r.attach(1)
		if _, err := s.conn.Write([]byte("held")); err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
		if b := r.m.HostRead(1); len(b) != 0 {
			t.Fatalf("the device got %q while the host was away", b)
		}
		if err := r.m.HostConnect(1, true); err != nil {
			t.Fatal(err)
		}
		got, err := r.m.HostReadFull(r.ctx, 1, 4)
		if err != nil || string(got) != "held" {
			t.Fatalf("after the host came: %q, %v", got, err)
		}
	})
	t.Run("a client that hangs up with nothing unread ends while the host is away", func(t *testing.T) {
		r := newRig(t, rigOpts{hostAway: true})
		s := r.attach(1)
		s.conn.Close()
		if err := s.wait(t); !errors.Is(err, io.EOF) {
			t.Fatalf("Serve = %v, want io.EOF", err)
		}
	})
	t.Run("a client that hangs up with bytes unread keeps the port until the host takes them", func(t *testing.T) {
		r := newRig(t, rigOpts{hostAway: true})
		s := r.attach(1)
		s.conn.Write([]byte("last words"))
		s.conn.Close()
		select {
		case err := <-s.done:
			t.Fatalf("Serve returned %v with bytes unread and the host away", err)
		case <-time.After(200 * time.Millisecond):
		}
		if err := r.m.HostConnect(1, true); err != nil {
			t.Fatal(err)
		}
		got, err := r.m.HostReadFull(r.ctx, 1, 10)
		if err != nil || string(got) != "last words" {
			t.Fatalf("host got %q, %v", got, err)
		}
		if err := s.wait(t); !errors.Is(err, io.EOF) {
			t.Fatalf("Serve = %v, want io.EOF", err)
		}
	})
	t.Run("EOF is reported once the device took everything", func(t *testing.T) {
		r := newRig(t, rigOpts{})
		s := r.attach(1)
		out := pattern(300_000, 9)
		go func() {
			s.conn.Write(out)
			s.conn.(interface{ CloseWrite() error }).CloseWrite()
		}()
		got, err := r.m.HostReadFull(r.ctx, 1, len(out))
		if err != nil || !bytes.Equal(got, out) {
			t.Fatalf("host got %d bytes, %v", len(got), err)
		}
		if err := s.wait(t); !errors.Is(err, io.EOF) {
			t.Fatalf("Serve = %v, want io.EOF (loop %v, port %v)", err, r.l.Counters(), r.l.PortCounters(1))
		}
	})
	t.Run("port removed", func(t *testing.T) {
		r := newRig(t, rigOpts{})
		s := r.attach(1)
		if err := r.m.Unplug(1); err != nil {
			t.Fatal(err)
		}
		if err := s.wait(t); !errors.Is(err, driver.ErrPortRemoved) {
			t.Fatalf("Serve = %v, want ErrPortRemoved", err)
		}
	})
}

func TestAttachDetachRaces(t *testing.T) {
	r := newRig(t, rigOpts{vectors: 2, ports: 2})
	p := r.port(1)
	if err := p.SetGuestOpen(r.ctx, true); err != nil {
		t.Fatal(err)
	}
	// Host bytes keep arriving while clients come and go.
	ctx, cancel := context.WithCancel(r.ctx)
	defer cancel()
	go func() {
		for ctx.Err() == nil {
			r.m.HostWrite(1, []byte("x"))
			time.Sleep(100 * time.Microsecond)
		}
	}()
	for i := range 100 {
		ours, theirs := socketPair(t)
		sctx, stop := context.WithCancel(r.ctx)
		done := make(chan error, 1)
		go func() { done <- r.l.Serve(sctx, p, ours) }()
		if i%3 == 0 {
			// A second client of the same port is refused.
			// (Which of the two the loop attaches first is not fixed.)
			o2, t2 := socketPair(t)
			time.Sleep(time.Duration(i%5) * 100 * time.Microsecond)
			ctx2, cancel2 := context.WithTimeout(r.ctx, 20*time.Millisecond)
			err := r.l.Serve(ctx2, p, o2)
			cancel2()
			if err != nil && !errors.Is(err, ErrBusy) && !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("second client: %v", err)
			}
			unix.Close(o2)
			t2.Close()
		}
		time.Sleep(time.Duration(i%7) * 50 * time.Microsecond)
		stop()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) && !errors.Is(err, ErrBusy) {
				t.Fatalf("round %d: Serve = %v", i, err)
			}
		case <-time.After(testTimeout):
			t.Fatalf("round %d: Serve did not return after its context ended", i)
		}
		unix.Close(ours)
		theirs.Close()
	}
	// Close with a client attached: it is told.
	s := r.attach(2)
	r.l.Close()
	if err := s.wait(t); !errors.Is(err, ErrClosed) {
		t.Fatalf("Serve after Close = %v, want ErrClosed", err)
	}
	ours, theirs := socketPair(t)
	defer unix.Close(ours)
	defer theirs.Close()
	if err := r.l.Serve(r.ctx, p, ours); !errors.Is(err, ErrClosed) {
		t.Fatalf("Serve on a closed loop = %v, want ErrClosed", err)
	}
}

// TestIdleLoopSleeps: once traffic stops the loop makes no pass, spin or
// system call at all (an idle agent costs no CPU).
func TestIdleLoopSleeps(t *testing.T) {
	for _, w := range waits {
		t.Run(w.name, func(t *testing.T) { testIdleLoopSleeps(t, w.mode) })
	}
}

func testIdleLoopSleeps(t *testing.T, mode waitMode) {
	r := newRig(t, rigOpts{wait: mode})
	s := r.attach(1)
	ctx, cancel := context.WithCancel(r.ctx)
	defer cancel()
	go echoHost(ctx, r)
	for range 50 {
		s.conn.Write([]byte{1})
		readFull(t, s.conn, 1)
	}
	time.Sleep(50 * time.Millisecond) // the last spin and sleep
	before := r.l.Counters()
	time.Sleep(300 * time.Millisecond)
	after := r.l.Counters()
	for _, k := range []string{"passes", "epoll_waits", "spin_us", "interrupts", "kicks"} {
		if after[k] != before[k] {
			t.Errorf("idle: %s moved from %d to %d", k, before[k], after[k])
		}
	}
}

// TestLoopPathAllocatesNothing drives the loop by hand: a pass that reads
// a client's bytes into a transmit buffer, and passes that hand received
// buffers to the client, allocate nothing.
func TestLoopPathAllocatesNothing(t *testing.T) {
	r := newRig(t, rigOpts{noRun: true})
	p := r.port(1)
	if err := p.SetGuestOpen(r.ctx, true); err != nil {
		t.Fatal(err)
	}
	ours, theirs := socketPair(t)
	defer unix.Close(ours)
	defer theirs.Close()
	c := &client{loop: r.l, port: p, fd: ours, done: make(chan error, 1), readable: true, writable: true, spin: newSpinner(Poll{Mode: PollOff})}
	c.pc = r.l.portCounters(1)
	r.l.attach(c)
	peer := connFD(t, theirs)
	// Transmit: the host does not read, so buffers stay in flight and no
	// kick is processed by the fake (which would allocate).
	r.m.SetQueueNotify(virtiotest.TxQueue(1), false)
	one := []byte{7}
	if n := testing.AllocsPerRun(20, func() {
		unix.Write(peer, one)
		c.readable = true
		r.l.pass()
	}); n != 0 {
		t.Errorf("transmit pass: %v allocations", n)
	}
	// Receive: buffers filled up front, each pass hands the client what
	// its (small) socket buffer takes.
	r.m.SetQueueNotify(virtiotest.RxQueue(1), false)
	if err := r.m.HostWrite(1, make([]byte, 100*4096)); err != nil {
		t.Fatal(err)
	}
	r.l.pass() // takes the used buffers
	var sink [65536]byte
	if n := testing.AllocsPerRun(20, func() {
		unix.Read(peer, sink[:])
		c.writable = true
		r.l.pass()
	}); n != 0 {
		t.Errorf("receive pass: %v allocations", n)
	}
}

// connFD returns the descriptor under a net.Conn (still owned by it).
func connFD(t *testing.T, c net.Conn) int {
	t.Helper()
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	fd := -1
	if err := rc.Control(func(f uintptr) { fd = int(f) }); err != nil {
		t.Fatal(err)
	}
	return fd
}

// TestInterruptStormIsBounded: a device raising interrupts with nothing to
// do in a loop gets them ignored for a backoff (a violation is reported)
// instead of keeping the loop busy, and the port works afterwards.
func TestInterruptStormIsBounded(t *testing.T) {
	for _, irq := range interrupts {
		t.Run(irq.name, func(t *testing.T) {
			r := newRig(t, rigOpts{vectors: irq.vectors})
			s := r.attach(1)
			// Interrupts one after another, each a wake-up of its own, until
			// the loop calls it a storm (bounded by the test's timeout).
			fired := 0
			for r.l.Counters()["irq_storms"] == 0 {
				if r.ctx.Err() != nil {
					t.Fatalf("%d interrupts without work were not taken for a storm: %v", fired, r.l.Counters())
				}
				r.m.Interrupt(virtiotest.RxQueue(1))
				fired++
				time.Sleep(20 * time.Microsecond)
			}
			// Muted: more of them do not wake the loop.
			before := r.l.Counters()["irq_wakes"]
			for range 200 {
				r.m.Interrupt(virtiotest.RxQueue(1))
			}
			if woke := r.l.Counters()["irq_wakes"] - before; woke > 1 {
				t.Errorf("muted, the loop still woke %d times", woke)
			}
			if v := r.d.Stats().Violations; v == 0 {
				t.Error("the storm was not reported as a violation")
			}
			// The device behaves again: bytes flow both ways.
			ctx, cancel := context.WithCancel(r.ctx)
			defer cancel()
			go echoHost(ctx, r)
			for i := range 20 {
				s.conn.Write([]byte{byte(i)})
				if got := readFull(t, s.conn, 1); got[0] != byte(i) {
					t.Fatalf("after the storm: got %d, want %d", got[0], i)
				}
			}
		})
	}
}

// TestParkedWaitAllocatesNothing: a parked wait that an event ends, with
// and without a deadline, and the yield before it allocate nothing.
func TestParkedWaitAllocatesNothing(t *testing.T) {
	r := newRig(t, rigOpts{noRun: true})
	if !r.l.parking {
		t.Fatal("the rig's loop does not park")
	}
	for _, streams := range []int{0, 1} {
		r.l.rxStreams = streams // a stream's tail due: a deadline
		if n := testing.AllocsPerRun(50, func() {
			r.l.wake()
			r.l.lastYield = 0
			if n, err := r.l.wait(); n < 1 || err != nil {
				t.Fatalf("wait = %d, %v; want the command's event", n, err)
			}
			rawio.EventfdDrain(r.l.cmdFD)
		}); n != 0 {
			t.Errorf("parked wait (streams %d): %v allocations", streams, n)
		}
	}
	r.l.rxStreams = 0
	if c := r.l.Counters(); c["yields"] == 0 {
		t.Errorf("no yield counted: %v", c)
	}
}

// TestTxStreamWaitsRawThenGoesIdle: while a guest→host stream runs in
// batch mode the loop sleeps with raw waits (which Go's scheduler does not
// see), and once the stream ends it stops waking within one raw wait and
// sleeps the ordinary way, with no deadline (an idle agent costs no CPU).
func TestTxStreamWaitsRawThenGoesIdle(t *testing.T) {
	r := newRig(t, rigOpts{})
	s := r.attach(1)
	out := pattern(8<<20, 5)
	go func() {
		for off := 0; off < len(out); off += 64 << 10 {
			s.conn.Write(out[off : off+64<<10])
		}
	}()
	got, err := r.m.HostReadFull(r.ctx, 1, len(out))
	if err != nil || !bytes.Equal(got, out) {
		t.Fatalf("host got %d bytes, %v", len(got), err)
	}
	c := r.l.Counters()
	if os.Geteuid() == 0 && c["batch_toggles"] == 0 {
		t.Errorf("a stream did not run batched (as root): %v", c)
	}
	if c["batch_toggles"] > 0 && c["raw_waits"] == 0 {
		t.Errorf("a batched stream made no raw wait: %v", c)
	}
	before := settled(t, r)
	time.Sleep(100 * time.Millisecond)
	if after := r.l.Counters(); after["epoll_waits"] != before["epoll_waits"] || after["raw_waits"] != before["raw_waits"] || after["passes"] != before["passes"] {
		t.Errorf("after the stream the loop kept waking: %d → %d waits (%d → %d raw)",
			before["epoll_waits"], after["epoll_waits"], before["raw_waits"], after["raw_waits"])
	}
}

// TestSeveralStreamsPassRealTime: two clients streaming guest→host at
// once arrive byte-exact, and (as root) the loop ran its passes over them
// real-time, so that neither woken client preempts it between the two.
func TestSeveralStreamsPassRealTime(t *testing.T) {
	r := newRig(t, rigOpts{ports: 2})
	outs := [][]byte{pattern(4<<20, 7), pattern(4<<20, 8)}
	for i, out := range outs {
		s := r.attach(uint32(i + 1))
		go func() {
			for off := 0; off < len(out); off += 64 << 10 {
				s.conn.Write(out[off : off+64<<10])
			}
		}()
	}
	errs := make(chan error, len(outs))
	for i, out := range outs {
		go func() {
			got, err := r.m.HostReadFull(r.ctx, uint32(i+1), len(out))
			if err == nil && !bytes.Equal(got, out) {
				err = fmt.Errorf("port %d: not what the client wrote", i+1)
			}
			errs <- err
		}()
	}
	for range outs {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if c := r.l.Counters(); os.Geteuid() == 0 && c["rt_passes"] == 0 {
		t.Errorf("two streams, but no pass ran real-time (as root): %v", c)
	}
}

// TestStreamBatchesAndGoesIdle: a host→guest stream is handed over in
// batches (far fewer writes than buffers), arrives byte-exact with its
// tail, and once it ends the loop stops waking by the clock.
func TestStreamBatchesAndGoesIdle(t *testing.T) {
	r := newRig(t, rigOpts{})
	s := r.attach(1)
	in := pattern(8<<20, 3)
	go func() {
		for off := 0; off < len(in); off += 64 << 10 {
			r.m.HostWrite(1, in[off:off+64<<10])
		}
	}()
	if got := readFull(t, s.conn, len(in)); !bytes.Equal(got, in) {
		t.Fatal("stream not byte-exact")
	}
	pc := r.l.PortCounters(1)
	if bufs := len(in) / 4096; pc["writev"] > uint64(bufs/4) {
		t.Errorf("%d writes for %d buffers: not batched", pc["writev"], bufs)
	}
	if c := r.l.Counters(); os.Geteuid() == 0 && (c["rt_calls"] == 0 || c["batch_toggles"] == 0) {
		t.Errorf("a stream ran neither batch nor real-time (as root): %v", c)
	}
	before := settled(t, r)
	time.Sleep(100 * time.Millisecond)
	if after := r.l.Counters(); after["epoll_waits"] != before["epoll_waits"] || after["passes"] != before["passes"] {
		t.Errorf("after the stream the loop kept waking: %d → %d waits", before["epoll_waits"], after["epoll_waits"])
	}
}

// TestRequestReplyParksInThePoller: between the round trips of a client
// (a socket or an in-process endpoint) a parking loop parks in Go's
// poller, not in a raw wait that keeps its P (and Go's sysmon awake:
// wait.go), each park ends with the client's or the device's event, and
// once the traffic stops the loop stops waking. A pinned loop waits raw.
func TestRequestReplyParksInThePoller(t *testing.T) {
	roundTrips := func(t *testing.T, r *rig, rw io.ReadWriter) {
		t.Helper()
		ctx, cancel := context.WithCancel(r.ctx)
		defer cancel()
		go echoHost(ctx, r)
		b := make([]byte, 1)
		for i := range 200 {
			if _, err := rw.Write([]byte{byte(i)}); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(rw, b); err != nil || b[0] != byte(i) {
				t.Fatalf("round trip %d: %v %v", i, b, err)
			}
			// Replies spaced beyond any spin, so the loop sleeps.
			time.Sleep(200 * time.Microsecond)
		}
	}
	check := func(t *testing.T, r *rig, before map[string]uint64) {
		t.Helper()
		c := r.l.Counters()
		// About one park per round trip; a request that lands while the
		// loop arms (arm_pending) or before its park spares one.
		if parks := c["parks"] - before["parks"]; parks < 190 {
			t.Errorf("200 spaced round trips, %d parks in the poller: %v", parks, c)
		}
		if raw := c["raw_waits"] - before["raw_waits"]; raw != 0 {
			t.Errorf("request/reply made %d raw waits: %v", raw, c)
		}
		settledAt := settled(t, r)
		time.Sleep(100 * time.Millisecond)
		if after := r.l.Counters(); after["epoll_waits"] != settledAt["epoll_waits"] || after["passes"] != settledAt["passes"] || after["parks"] != settledAt["parks"] {
			t.Errorf("after the round trips the loop kept waking: %d → %d waits", settledAt["epoll_waits"], after["epoll_waits"])
		}
	}
	t.Run("socket", func(t *testing.T) {
		r := newRig(t, rigOpts{poll: Poll{Mode: PollOff}})
		s := r.attach(1)
		before := r.l.Counters()
		roundTrips(t, r, s.conn)
		check(t, r, before)
	})
	// Pinned (several Ps): raw waits between round trips instead, then
	// the ordinary wait once they stop; never a park.
	t.Run("pinned", func(t *testing.T) {
		r := newRig(t, rigOpts{poll: Poll{Mode: PollOff}, wait: waitRaw})
		s := r.attach(1)
		roundTrips(t, r, s.conn)
		if c := r.l.Counters(); c["raw_waits"] < 100 || c["parks"] != 0 || c["yields"] != 0 {
			t.Errorf("200 spaced round trips, pinned: %d raw waits, %d parks, %d yields: %v", c["raw_waits"], c["parks"], c["yields"], c)
		}
		before := settled(t, r)
		time.Sleep(100 * time.Millisecond)
		if after := r.l.Counters(); after["epoll_waits"] != before["epoll_waits"] || after["passes"] != before["passes"] {
			t.Errorf("after the round trips the loop kept waking: %d → %d waits", before["epoll_waits"], after["epoll_waits"])
		}
	})
	t.Run("in-process", func(t *testing.T) {
		r := newRig(t, rigOpts{poll: Poll{Mode: PollOff}})
		e := r.hold(1)
		before := r.l.Counters()
		e.SetDeadline(time.Now().Add(testTimeout))
		roundTrips(t, r, e)
		check(t, r, before)
	})
	// Pinned with an in-process endpoint attached: no raw wait for
	// request/reply, since the endpoint's goroutines need the P a raw
	// wait keeps.
	t.Run("pinned in-process", func(t *testing.T) {
		r := newRig(t, rigOpts{poll: Poll{Mode: PollOff}, wait: waitRaw})
		e := r.hold(1)
		// Attach returns once the loop took the endpoint; a raw wait
		// before that (after the device's first interrupt) is counted
		// by then.
		before := r.l.Counters()["raw_waits"]
		e.SetDeadline(time.Now().Add(testTimeout))
		roundTrips(t, r, e)
		if c := r.l.Counters(); c["raw_waits"] != before || c["parks"] != 0 {
			t.Errorf("an in-process endpoint attached, pinned, yet %d raw waits and %d parks: %v", c["raw_waits"]-before, c["parks"], c)
		}
	})
}

// settled waits until the loop's waits stop for three raw waits' time (a
// loaded machine may run the last raw wait late) and returns its counters
// then; after 2 s it returns them as they are, for the caller to judge.
func settled(t *testing.T, r *rig) map[string]uint64 {
	t.Helper()
	end := time.Now().Add(2 * time.Second)
	c := r.l.Counters()
	for time.Now().Before(end) {
		time.Sleep(3 * rawWaitMax * time.Millisecond)
		next := r.l.Counters()
		if next["epoll_waits"] == c["epoll_waits"] && next["passes"] == c["passes"] {
			return next
		}
		c = next
	}
	return c
}

// TestFullClientResumesOnSpace: a client that reads nothing while the host
// sends more than its socket holds. The loop's writev finds the client's
// buffer full, and only then watches the descriptor for EPOLLOUT
// (watchSpace); when the client reads, the room it makes must bring the
// loop back and every byte must arrive. (The mutant that never watches
// EPOLLOUT stalls here: nothing else wakes the loop once it holds bytes
// for a full client and has no receive buffers left to post.)
func TestFullClientResumesOnSpace(t *testing.T) {
	for _, irq := range interrupts {
		t.Run(irq.name, func(t *testing.T) {
			r := newRig(t, rigOpts{vectors: irq.vectors})
			s := r.attach(1)
			const n = 4 << 20
			in := pattern(n, 3)
			if err := r.m.HostWrite(1, in); err != nil {
				t.Fatal(err)
			}
			// Let the loop fill the client's buffer and stop.
			time.Sleep(200 * time.Millisecond)
			before := r.l.Counters()["space_edges"]
			if got := readFull(t, s.conn, n); !bytes.Equal(got, in) {
				t.Fatalf("host→guest %d bytes: not what the host sent", n)
			}
			if edges := r.l.Counters()["space_edges"] - before; edges == 0 {
				t.Errorf("%d bytes reached a client that was full, with no EPOLLOUT edge", n)
			}
		})
	}
}
