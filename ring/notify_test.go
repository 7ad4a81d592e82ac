package ring_test

import (
	"testing"

	"github.com/vserial/vserial/ring"
	"github.com/vserial/vserial/ring/ringtest"
)

// cycle sends one single-segment chain through the ring and reports whether
// the driver was told to kick and the device to interrupt.
func (r *rig) cycle(seg []ring.Segment) (kick, irq bool) {
	r.t.Helper()
	r.add(seg...)
	kick = r.q.Publish()
	c := r.devPop()
	irq = r.dev.Push(c.Head, 0)
	r.pop()
	return kick, irq
}

// Spec 2.7.7: without EVENT_IDX the driver kicks unless used.flags has
// NO_NOTIFY, and the device interrupts unless avail.flags has NO_INTERRUPT.
func TestFlagsSuppressKicksAndInterrupts(t *testing.T) {
	for name, cfg := range map[string]ring.Config{"modern": {Size: 4}, "legacy": {Size: 4, Layout: ring.Legacy}} {
		t.Run(name, func(t *testing.T) {
			r := newRig(t, cfg)
			seg := r.one(1)
			if kick, irq := r.cycle(seg); !kick || !irq {
				t.Fatalf("default: kick %v irq %v; want both", kick, irq)
			}
			r.dev.SetNotify(false)
			r.q.DisableInterrupts()
			if r.dev.AvailFlags() != 1 {
				t.Fatalf("avail.flags = %d after DisableInterrupts", r.dev.AvailFlags())
			}
			if kick, irq := r.cycle(seg); kick || irq {
				t.Fatalf("suppressed: kick %v irq %v; want neither", kick, irq)
			}
			r.dev.SetNotify(true)
			if r.q.EnableInterrupts() {
				t.Fatal("EnableInterrupts reported work pending on an empty ring")
			}
			if kick, irq := r.cycle(seg); !kick || !irq {
				t.Fatalf("re-enabled: kick %v irq %v; want both", kick, irq)
			}
		})
	}
}

// Spec 2.7.10: with EVENT_IDX the driver kicks only when its idx update
// crosses avail_event, and avail.flags stays 0.
func TestEventIdxKickOnlyWhenCrossingAvailEvent(t *testing.T) {
	r := newRig(t, ring.Config{Size: 8, EventIdx: true})
	seg := r.one(1)
	r.add(seg...)
	if !r.q.Publish() { // avail_event = 0 initially: idx 0 → 1 crosses it
		t.Fatal("first publish did not kick")
	}
	r.dev.SetNotify(false) // device is busy: avail_event parked behind
	r.add(seg...)
	if r.q.Publish() {
		t.Fatal("kicked although the device parked avail_event")
	}
	r.devPop()
	r.devPop()
	r.dev.SetNotify(true) // avail_event = 2
	r.add(seg...)
	r.add(seg...)
	if !r.q.Publish() { // 2 → 4 crosses 2
		t.Fatal("batch crossing avail_event did not kick")
	}
	// Device left notifications on but has not popped: avail_event stays 2.
	r.add(seg...)
	if r.q.Publish() { // 4 → 5 does not cross 2
		t.Fatal("kicked for a publish that did not cross avail_event")
	}
	if r.dev.AvailFlags() != 0 {
		t.Fatal("avail.flags set with EVENT_IDX")
	}
}

// Spec 2.7.10: with EVENT_IDX the device interrupts only when used.idx moves
// past used_event; DisableInterrupts parks used_event and Enable brings it
// back to the driver's position.
func TestEventIdxInterruptOnlyWhenCrossingUsedEvent(t *testing.T) {
	r := newRig(t, ring.Config{Size: 8, EventIdx: true})
	seg := r.one(1)
	if _, irq := r.cycle(seg); !irq {
		t.Fatal("used_event = 0: first used buffer must interrupt")
	}
	r.q.DisableInterrupts()
	if r.dev.AvailFlags() != 0 {
		t.Fatal("DisableInterrupts set avail.flags with EVENT_IDX")
	}
	for range 3 {
		if _, irq := r.cycle(seg); irq {
			t.Fatal("interrupt while disabled")
		}
	}
	if r.q.EnableInterrupts() {
		t.Fatal("EnableInterrupts reported pending on an empty ring")
	}
	if r.dev.UsedEvent() != 4 {
		t.Fatalf("used_event = %d after 4 buffers, want 4", r.dev.UsedEvent())
	}
	// Two completions in one used.idx update cross used_event once.
	a, b := r.add(seg...), r.add(seg...)
	r.q.Publish()
	r.devPop()
	r.devPop()
	if !r.dev.PushN([]ring.Used{{Head: a}, {Head: b}}) {
		t.Fatal("batch crossing used_event did not interrupt")
	}
	r.pop()
	r.pop()
}

// Spec 2.7.14.4: EnableInterrupts re-reads used.idx after asking for an
// interrupt, so a buffer used in the window is reported as pending.
func TestEnableInterruptsReportsBufferUsedWhileDisabled(t *testing.T) {
	for name, cfg := range allConfigs(4) {
		t.Run(name, func(t *testing.T) {
			r := newRig(t, cfg)
			r.q.DisableInterrupts()
			r.add(r.one(1)...)
			r.q.Publish()
			if irq := r.dev.Push(r.devPop().Head, 0); irq {
				t.Fatal("interrupt while disabled")
			}
			if !r.q.EnableInterrupts() {
				t.Fatal("EnableInterrupts missed a buffer used while interrupts were off")
			}
			r.pop()
		})
	}
}

// vring_need_event: the event lies in [old, new) modulo 2^16, including
// windows that wrap past 65535.
func TestEventIdxNeedEventWindowWraps(t *testing.T) {
	r := newRig(t, ring.Config{Size: 4, EventIdx: true})
	seg := r.one(1)
	r.q.DisableInterrupts()
	// Walk the indices up to just below the wrap.
	for range 65533 {
		r.cycle(seg)
	}
	if r.dev.UsedIdx() != 65533 {
		t.Fatalf("used idx %d", r.dev.UsedIdx())
	}
	// used_event = 65533; a batch of 4 moves used.idx 65533 → 1 (wrapping).
	if r.q.EnableInterrupts() {
		t.Fatal("pending on an empty ring")
	}
	var used []ring.Used
	for range 4 {
		used = append(used, ring.Used{Head: r.add(seg...)})
	}
	r.dev.SetNotify(true) // avail_event = 65533
	if !r.q.Publish() {
		t.Fatal("avail idx 65533 → 1 did not kick for avail_event 65533")
	}
	for range 4 {
		r.devPop()
	}
	if !r.dev.PushN(used) {
		t.Fatal("used idx 65533 → 1 did not interrupt for used_event 65533")
	}
	for range 4 {
		r.pop()
	}
	// used_event = 1 after the drain; 1 → 2 crosses it, 2 → 3 does not.
	if _, ok, _ := r.q.Pop(); ok {
		t.Fatal("spurious used buffer")
	}
	if r.dev.UsedEvent() != 1 {
		t.Fatalf("used_event = %d after draining to 1", r.dev.UsedEvent())
	}
	r.add(seg...)
	r.add(seg...)
	r.q.Publish()
	if !r.dev.Push(r.devPop().Head, 0) {
		t.Fatal("1 → 2 did not cross used_event 1")
	}
	if r.dev.Push(r.devPop().Head, 0) {
		t.Fatal("2 → 3 crossed used_event 1")
	}
}

func TestNeverInterruptSwitchSuppressesInterrupts(t *testing.T) {
	forBoth(t, ring.Config{Size: 4, EventIdx: true}, func(t *testing.T, r *rig) {
		r.dev.Misbehave(ringtest.Misbehaviour{NeverInterrupt: true})
		seg := r.one(1)
		for range 3 {
			if _, irq := r.cycle(seg); irq {
				t.Fatal("NeverInterrupt device asked for an interrupt")
			}
		}
		// The driver still finds the buffers by polling: the cycles above popped.
		if r.q.NumFree() != 4 {
			t.Fatalf("NumFree %d", r.q.NumFree())
		}
	})
}

func TestDelayPublishHoldsUsedIdxUntilFlush(t *testing.T) {
	forBoth(t, ring.Config{Size: 4}, func(t *testing.T, r *rig) {
		r.dev.Misbehave(ringtest.Misbehaviour{DelayPublish: true})
		a, b := r.add(r.one(1)...), r.add(r.one(1)...)
		r.q.Publish()
		r.dev.Push(r.devPop().Head, 1)
		r.dev.Push(r.devPop().Head, 1)
		if _, ok, err := r.q.Pop(); ok || err != nil {
			t.Fatalf("Pop before Flush = %v, %v", ok, err)
		}
		if r.q.EnableInterrupts() {
			t.Fatal("pending before Flush")
		}
		if !r.dev.Flush() {
			t.Fatal("Flush did not interrupt")
		}
		if u := r.pop(); u.Head != a {
			t.Fatalf("popped %d, want %d", u.Head, a)
		}
		if u := r.pop(); u.Head != b {
			t.Fatalf("popped %d, want %d", u.Head, b)
		}
		if r.dev.Flush() {
			t.Fatal("empty Flush interrupted")
		}
	})
}
