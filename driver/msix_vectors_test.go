package driver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/vserial/vserial/driver/virtiotest"
)

// The MSI-X layout (setupVectors): configuration changes and the control
// queues on vector 0, port p's data queues on 1 + p mod (n-1).

func TestQueueVectorLayout(t *testing.T) {
	for _, c := range []struct {
		nvec      int
		multiport bool
		want      map[uint16]uint16 // queue → vector
	}{
		{0, true, map[uint16]uint16{0: NoVector, 2: NoVector, 5: NoVector}},
		{1, true, map[uint16]uint16{0: 0, 1: 0, 2: 0, 3: 0, 4: 0, 9: 0}},
		// QEMU's default: every data queue shares vector 1.
		{2, true, map[uint16]uint16{0: 1, 1: 1, 2: 0, 3: 0, 4: 1, 5: 1, 9: 1}},
		// Ports 0-2 on vectors 1-3, port 3 wraps to 1.
		{4, true, map[uint16]uint16{0: 1, 1: 1, 2: 0, 3: 0, 4: 2, 5: 2, 6: 3, 7: 3, 8: 1, 9: 1}},
		// Without MULTIPORT queues 0/1 are port 0.
		{4, false, map[uint16]uint16{0: 1, 1: 1}},
	} {
		d := &Device{nvec: c.nvec, multiport: c.multiport, vecConfig: 0}
		if c.nvec == 0 {
			d.vecConfig = NoVector
		}
		for q, want := range c.want {
			if got := d.queueVector(q); got != want {
				t.Errorf("%d vectors, multiport %v: queue %d on vector %#x, want %#x", c.nvec, c.multiport, q, got, want)
			}
		}
	}
}

func TestMSIXVectorsPerPort(t *testing.T) {
	for _, opts := range []virtiotest.Options{{MSIXVectors: 2}, {MSIXVectors: 4}, {LegacyOnly: true, MSIXVectors: 4}, {MSIXVectors: 4, Packed: true}} {
		name := fmt.Sprintf("legacy=%v vectors=%d packed=%v", opts.LegacyOnly, opts.MSIXVectors, opts.Packed)
		t.Run(name, func(t *testing.T) {
			ports := []portSpec{{id: 1, name: "a", host: true}, {id: 2, name: "b", host: true}, {id: 3, name: "c", host: true}}
			r := newRig(t, rigOpts{fn: opts, packed: opts.Packed, plug: plugPorts(ports...)})
			// What the device was told, queue by queue.
			for qi := uint16(0); qi < 10; qi++ {
				info, ok := r.f.Queue(qi)
				if !ok {
					t.Fatalf("queue %d missing", qi)
				}
				if want := r.d.queueVector(qi); info.Vector != want {
					t.Errorf("queue %d: device has vector %#x, driver meant %#x", qi, info.Vector, want)
				}
			}
			if info, _ := r.f.Queue(controlRxQueue); info.Vector != 0 {
				t.Errorf("control receiveq on vector %d, want 0 (with config changes)", info.Vector)
			}
			if opts.MSIXVectors == 4 {
				seen := map[uint16]bool{}
				for _, p := range ports {
					info, _ := r.f.Queue(uint16(2 + 2*p.id))
					seen[info.Vector] = true
				}
				if len(seen) != 3 {
					t.Errorf("three ports share %d vectors, want one each: %v", len(seen), seen)
				}
			}
			// Data both ways on every port at once: each wake-up services
			// only the ports whose vector fired, and none is missed.
			errs := make(chan error, len(ports))
			for i, ps := range ports {
				p := r.port(ps.id, ps.name)
				go func() { errs <- roundTrip(r, p, ps.id, bytes.Repeat([]byte{byte('a' + i)}, 3*bufSize+17)) }()
			}
			for range ports {
				if err := <-errs; err != nil {
					t.Error(err)
				}
			}
			// A configuration change (DEVICE_NEEDS_RESET) comes on vector 0
			// and is seen even though no queue fired with it.
			resetThenRoundTrip(t, r)
		})
	}
}

// resetThenRoundTrip has the device ask for a reset and checks that port 1
// ("a") comes back and carries data both ways.
func resetThenRoundTrip(t *testing.T, r *rig) {
	t.Helper()
	r.m.NeedsReset()
	r.until("reset", func() bool { return r.d.Stats().Resets == 1 })
	p := r.port(1, "a")
	r.until("port back", p.settled)
	if err := roundTrip(r, p, 1, []byte("after reset")); err != nil {
		t.Error(err)
	}
}

// roundTrip sends data guest→host and back host→guest on port p (id).
func roundTrip(r *rig, p *Port, id uint32, data []byte) error {
	if err := p.SetGuestOpen(r.ctx, true); err != nil {
		return err
	}
	if err := r.m.WaitFor(r.ctx, func() bool { return r.m.GuestConnected(id) }); err != nil {
		return fmt.Errorf("port %d guest open: %w", id, err)
	}
	if _, err := p.Send(r.ctx, bytes.NewReader(data)); err != nil {
		return fmt.Errorf("port %d send: %w", id, err)
	}
	got, err := r.m.HostReadFull(r.ctx, id, len(data))
	if err != nil || !bytes.Equal(got, data) {
		return fmt.Errorf("port %d: host got %d bytes (%v), want the %d sent", id, len(got), err, len(data))
	}
	if err := r.m.HostWrite(id, data); err != nil {
		return err
	}
	var buf bytes.Buffer
	for buf.Len() < len(data) {
		if _, err := p.Recv(r.ctx, &buf); err != nil {
			return fmt.Errorf("port %d recv after %d bytes: %w", id, buf.Len(), err)
		}
	}
	if !bytes.Equal(buf.Bytes(), data) {
		return fmt.Errorf("port %d: guest got different bytes", id)
	}
	return nil
}

func TestFakeIRQReportsFiredVectors(t *testing.T) {
	m := consoleLike()
	f, fn := newFake(t, m, virtiotest.Options{MSIXVectors: 4})
	tr := mustTransport(t, fn)
	initialise(t, tr, featMultiport)
	if err := tr.SetConfigVector(0); err != nil {
		t.Fatal(err)
	}
	for q := range m.Sizes {
		s := queueMem(t, fn, false, m.Sizes[q])
		s.Vector = uint16(1 + q%3)
		if err := tr.SetupQueue(uint16(q), s); err != nil {
			t.Fatal(err)
		}
	}
	if err := tr.AddStatus(StatusDriverOK); err != nil {
		t.Fatal(err)
	}
	vi, ok := fn.IRQ().(VectorIRQ)
	if !ok {
		t.Fatal("the fake IRQ is not a VectorIRQ")
	}
	m.Bus().Interrupt(1) // vector 2
	m.Bus().Interrupt(2) // vector 3
	got, err := vi.WaitVectors(context.Background())
	if err != nil || got != 1<<2|1<<3 {
		t.Fatalf("WaitVectors = %#b, %v; want vectors 2 and 3", got, err)
	}
	_ = f
}

// A device that refuses some MSI-X vectors (they read back NO_VECTOR) gets
// the bring-up again with fewer: per-port vectors, then one shared data
// vector, then one vector for everything; data flows either way. A device
// that refuses vector 0 itself cannot be driven with MSI-X: Open fails.
func TestMSIXVectorFallback(t *testing.T) {
	for _, c := range []struct {
		accepted  uint16
		wantNvec  int
		fallbacks uint64
	}{
		{accepted: 2, wantNvec: 2, fallbacks: 1},
		{accepted: 1, wantNvec: 1, fallbacks: 2},
	} {
		t.Run(fmt.Sprintf("accepted=%d", c.accepted), func(t *testing.T) {
			opts := virtiotest.Options{MSIXVectors: 4}
			opts.Misbehave.VectorsAccepted = c.accepted
			ports := []portSpec{{id: 1, name: "a", host: true}, {id: 2, name: "b", host: true}}
			r := newRig(t, rigOpts{fn: opts, plug: plugPorts(ports...)})
			if r.d.nvec != c.wantNvec || r.d.Stats().VectorFallbacks != c.fallbacks {
				t.Fatalf("%d vectors after %d fallbacks, want %d after %d", r.d.nvec, r.d.Stats().VectorFallbacks, c.wantNvec, c.fallbacks)
			}
			for qi := uint16(0); qi < 8; qi++ {
				if info, _ := r.f.Queue(qi); info.Vector >= c.accepted {
					t.Errorf("queue %d on vector %#x, which the device refuses", qi, info.Vector)
				}
			}
			if !r.log.Contains("refused an MSI-X vector") {
				t.Errorf("no log line for the fallback:\n%s", r.log)
			}
			for _, ps := range ports {
				if err := roundTrip(r, r.port(ps.id, ps.name), ps.id, bytes.Repeat([]byte{'x'}, 2*bufSize+3)); err != nil {
					t.Error(err)
				}
			}
			resetThenRoundTrip(t, r)
		})
	}
	opts := virtiotest.Options{MSIXVectors: 4}
	opts.Misbehave.VectorRefused = true
	r := newRig(t, rigOpts{fn: opts, noOpen: true})
	if d, err := Open(r.ctx, r.fn, Config{Logger: r.logger()}); err == nil || !errors.Is(err, ErrVectorRefused) {
		if d != nil {
			d.Close()
		}
		t.Fatalf("Open with every vector refused: %v, want ErrVectorRefused", err)
	}
}
