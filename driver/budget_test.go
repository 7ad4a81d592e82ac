package driver

import (
	"bytes"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/vserial/vserial/driver/virtiotest"
)

// eventLog collects a device's events until it closes Events.
type eventLog struct {
	mu  sync.Mutex
	evs []Event
}

func collectEvents(d *Device) *eventLog {
	l := &eventLog{}
	go func() {
		for ev := range d.Events() {
			l.mu.Lock()
			l.evs = append(l.evs, ev)
			l.mu.Unlock()
		}
	}()
	return l
}

func (l *eventLog) kind(k EventKind) []Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []Event
	for _, ev := range l.evs {
		if ev.Kind == k {
			out = append(out, ev)
		}
	}
	return out
}

// roundTrip opens port id on both sides and moves bytes both ways.
func (r *rig) roundTrip(id uint32) {
	r.t.Helper()
	p := r.port(id, "")
	if err := p.SetGuestOpen(r.ctx, true); err != nil {
		r.t.Fatal(err)
	}
	if err := r.m.HostConnect(id, true); err != nil {
		r.t.Fatal(err)
	}
	r.until("host connected", p.HostConnected)
	in := bytes.Repeat([]byte{byte(id), 'h'}, 40000) // more than a reduced set of receive buffers
	if err := r.m.HostWrite(id, in); err != nil {
		r.t.Fatal(err)
	}
	if got := r.recvN(p, len(in)); !bytes.Equal(got, in) {
		r.t.Fatalf("port %d: host→guest bytes differ", id)
	}
	out := bytes.Repeat([]byte{byte(id), 'g'}, 50000)
	if n, err := p.Write(r.ctx, out); err != nil || n != len(out) {
		r.t.Fatalf("port %d: Write = %d, %v", id, n, err)
	}
	if got, err := r.m.HostReadFull(r.ctx, id, len(out)); err != nil || !bytes.Equal(got, out) {
		r.t.Fatalf("port %d: host read %d bytes, %v", id, len(got), err)
	}
}

// A device that asks for everything (max_nr_ports 0x8000, num_queues
// 0xffff, the largest queues: 256 entries on the modern interface, 1024 on
// the legacy one, PORT_ADD for every id) gets ports capped within the
// budget, the ports it does get all work, the memory never exceeds the
// budget, and another device next to it keeps serving. The heap is limited
// to twice the budget so that a driver without the budget fails here
// instead of exhausting the machine (0x7fff ports' modern rings alone are
// 437 MB, their receive buffers 32 GiB).
func TestHostileDeviceStaysWithinBudget(t *testing.T) {
	for _, tc := range []struct {
		name string
		fn   virtiotest.Options
		size uint16
	}{
		{"modern-256", virtiotest.Options{Misbehave: virtiotest.TransportMisbehaviour{NumQueues: 0xffff}}, 256},
		{"legacy-1024", virtiotest.Options{LegacyOnly: true}, 1024},
	} {
		t.Run(tc.name, func(t *testing.T) { hostileDevice(t, tc.fn, tc.size) })
	}
}

func hostileDevice(t *testing.T, fn virtiotest.Options, size uint16) {
	other := newRig(t, rigOpts{plug: plugPorts(portSpec{id: 1, name: "other"})})
	other.port(1, "other")

	const budget = DefaultDMABudget
	r := newRig(t, rigOpts{
		console: virtiotest.ConsoleConfig{MaxPorts: MaxPorts - 1, QueueSize: size, ControlQueueSize: size},
		fn:      fn,
		bad:     &virtiotest.ConsoleMisbehaviour{OverrideMaxNrPorts: true, MaxNrPorts: MaxPorts},
		plug:    plugPorts(portSpec{id: 1, name: "first"}, portSpec{id: 1000, name: "late"}),
		noOpen:  true,
	})
	r.f.Heap().SetLimit(2 * budget)
	d, err := Open(r.ctx, r.fn, Config{DMABudget: budget, Logger: r.logger()})
	if err != nil {
		t.Fatalf("Open: %v\nlog (tail): %s", err, tail(r.log.String()))
	}
	r.d = d
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if n, b := r.f.Heap().Live(); n != 0 {
			t.Errorf("after Close %d allocations (%d bytes) still live", n, b)
		}
	})
	evs := collectEvents(d)
	nslots := d.MaxPorts()
	if nslots <= 1000 || nslots >= MaxPorts-1 {
		t.Fatalf("%d ports served: want the budget to cap 0x7fff, above port 1000", nslots)
	}
	// PORT_ADD for every id the protocol allows, paced below the control
	// flood limit (maxControlRate a second) so that the budget, not the
	// flood detection, is what this test sees.
	for id := uint32(0); id < MaxPorts; id++ {
		if id == 1 || id == 1000 {
			continue // announced by the device at DEVICE_READY
		}
		if id > 0 && id%uint32(maxControlRate*3/4) == 0 {
			time.Sleep(1100 * time.Millisecond)
		}
		r.until("a free control buffer", func() bool { return r.m.SendControl(id, virtiotest.CtrlPortAdd, 1, nil) })
	}
	r.until("every served port added", func() bool { return len(d.Ports()) == int(nslots) })
	st := d.Stats()
	if st.BudgetRefused != 0 || st.BudgetReduced == 0 || st.IgnoredPorts == 0 {
		t.Errorf("stats %+v: want reduced sets, no port refused, ports beyond the cap ignored", st)
	}
	r.roundTrip(1)    // a full set
	r.roundTrip(1000) // a reduced set
	other.roundTrip(1)

	u := d.DMAUsage()
	if u.Budget != budget || u.Peak > budget || u.InUse+u.Reserved > budget {
		t.Errorf("DMA usage %+v beyond the budget of %d", u, budget)
	}
	if p := r.f.Heap().Peak(); p > budget {
		t.Errorf("the heap held %d bytes at its peak, budget %d", p, budget)
	}
	r.until("limit events", func() bool { return len(evs.kind(DeviceLimited)) == 2 })
	for _, ev := range evs.kind(DeviceLimited) {
		if !errors.Is(ev.Err, ErrDMABudget) {
			t.Errorf("limit event %v", ev.Err)
		}
	}
	for _, want := range []string{"ports capped at", "later ports get 8 receive and 8 transmit buffers"} {
		if !r.log.Contains(want) {
			t.Errorf("log lacks %q", want)
		}
	}
}

// The default budget gives 64 ports the full buffer set with the largest
// queues either interface allows, transmit buffers included: none is
// reduced.
func TestDefaultBudgetFits64FullPorts(t *testing.T) {
	for _, tc := range []struct {
		name string
		fn   virtiotest.Options
		size uint16
	}{
		{"modern-256", virtiotest.Options{}, 256},
		{"legacy-1024", virtiotest.Options{LegacyOnly: true}, 1024},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ports []portSpec
			for id := range uint32(64) {
				ports = append(ports, portSpec{id: id, host: true})
			}
			r := newRig(t, rigOpts{
				console: virtiotest.ConsoleConfig{MaxPorts: 64, QueueSize: tc.size, ControlQueueSize: tc.size},
				fn:      tc.fn,
				plug:    plugPorts(ports...),
				cfg:     Config{MaxPorts: 64},
			})
			r.until("64 ports", func() bool { return len(r.d.Ports()) == 64 })
			r.f.Heap().SetLimit(DefaultDMABudget)
			for _, p := range r.d.Ports() {
				if _, err := p.Write(r.ctx, []byte("x")); err != nil { // allocates its transmit buffers
					t.Fatalf("port %d: %v", p.ID(), err)
				}
			}
			st := r.d.Stats()
			if st.BudgetReduced != 0 || st.BudgetRefused != 0 {
				t.Fatalf("stats %+v: a port did not get the full set\n%s", st, tail(r.log.String()))
			}
			u := r.d.DMAUsage()
			t.Logf("%s: %d bytes in use for 64 full ports (budget %d)", tc.name, u.InUse, u.Budget)
			for _, p := range r.d.Ports() {
				s := p.s
				if len(s.rxBufs) != 256 || len(s.txBufs) != defaultTxBuffers || s.txBufs[0].mem.Len() != defaultTxBufferSize {
					t.Fatalf("port %d: %d receive, %d transmit buffers", p.ID(), len(s.rxBufs), len(s.txBufs))
				}
			}
		})
	}
}

func tail(s string) string {
	if len(s) > 4000 {
		return "..." + s[len(s)-4000:]
	}
	return s
}
