package ring_test

import (
	"encoding/binary"
	"math/rand/v2"
	"testing"

	"github.com/vserial/vserial/ring"
	"github.com/vserial/vserial/ring/ringtest"
)

// descFlags returns the flags of packed descriptor slot i as in memory.
func (r *rig) descFlags(i int) uint16 {
	return binary.LittleEndian.Uint16(r.hostileArea()[16*i+14:])
}

// Spec 2.8.1: both wrap counters flip at every lap, on a size that is not
// a power of two, with chains of 1..3 descriptors straddling the wrap and
// the device completing out of order; every id and length comes back and
// the free count returns to N.
func TestPackedWrapCountersManyLaps(t *testing.T) {
	for _, size := range []uint16{1, 5, 8} {
		cfg := ring.Config{Size: size, Layout: ring.PackedRing}
		r := newRig(t, cfg)
		bufs := [3]ring.Segment{}
		for i := range bufs {
			b := r.buf(64)
			bufs[i] = ring.Segment{Addr: b.Addr(), Len: 64, Write: true}
		}
		rng := rand.New(rand.NewPCG(uint64(size), 7))
		posted := map[uint16]uint32{}
		var chains []ringtest.Chain
		for round := range 4000 {
			for {
				k := 1 + rng.IntN(min(3, int(size)))
				h, err := r.q.Add(bufs[:k])
				if err != nil {
					break
				}
				posted[h] = uint32(64 * k)
			}
			r.q.Publish()
			chains = chains[:0]
			for {
				c, ok, err := r.dev.Pop()
				if err != nil {
					t.Fatalf("size %d round %d: device: %v", size, round, err)
				}
				if !ok {
					break
				}
				chains = append(chains, c)
			}
			rng.Shuffle(len(chains), func(i, j int) { chains[i], chains[j] = chains[j], chains[i] })
			for _, c := range chains {
				r.dev.Push(c.Head, c.Writable()-1)
			}
			for len(posted) > 0 {
				u := r.pop()
				if w, ok := posted[u.Head]; !ok || u.Len != w-1 {
					t.Fatalf("size %d round %d: popped %+v, posted %v", size, round, u, posted)
				}
				delete(posted, u.Head)
			}
			if r.q.NumFree() != int(size) || r.q.InFlight() != 0 {
				t.Fatalf("size %d: NumFree %d InFlight %d", size, r.q.NumFree(), r.q.InFlight())
			}
		}
		if s := r.q.Stats(); s.Violations != 0 || s.Used != s.Added || s.Used < 4000 {
			t.Fatalf("size %d: stats %+v", size, s)
		}
	}
}

// Spec 2.8.1: a descriptor made available in lap k carries AVAIL = wrap,
// USED = !wrap; the device marks it used with both equal to its counter.
func TestPackedDescriptorFlagsFollowWrap(t *testing.T) {
	r := newRig(t, ring.Config{Size: 2, Layout: ring.PackedRing})
	seg := r.one(1)
	const avail, used = 1 << 7, 1 << 15
	for lap, want := range []uint16{avail, used, avail} {
		for slot := range 2 {
			r.add(seg...)
			r.q.Publish()
			if f := r.descFlags(slot); f&(avail|used) != want {
				t.Fatalf("lap %d slot %d: flags %#x, want avail/used bits %#x", lap, slot, f, want)
			}
			r.dev.Push(r.devPop().Head, 0)
			if f := r.descFlags(slot); f&(avail|used) != (want&avail)*0x101 {
				t.Fatalf("lap %d slot %d: used flags %#x", lap, slot, f)
			}
			r.pop()
		}
	}
}

// Spec 2.8.21: Add writes the chain but the first descriptor's flags only at
// Publish, so the device sees nothing until then, then the whole batch.
func TestPackedPublishRevealsBatchAtOnce(t *testing.T) {
	r := newRig(t, ring.Config{Size: 8, Layout: ring.PackedRing})
	r.add(r.rw(1, 1)...)
	r.add(r.one(1)...)
	if n := r.dev.Pending(); n != 0 {
		t.Fatalf("device sees %d chains before Publish", n)
	}
	if f := r.descFlags(0); f != 0 {
		t.Fatalf("first descriptor flags %#x before Publish", f)
	}
	r.q.Publish()
	if n := r.dev.Pending(); n != 2 {
		t.Fatalf("device sees %d chains after Publish, want 2", n)
	}
}

// Spec 2.8.10, 2.8.14: the device event suppression structure drives kicks
// in its three modes: ENABLE (always), DISABLE (never), DESC (only when the
// batch made the named descriptor available, EVENT_IDX).
func TestPackedKickSuppressionModes(t *testing.T) {
	r := newRig(t, ring.Config{Size: 4, Layout: ring.PackedRing})
	seg := r.one(1)
	if kick, _ := r.cycle(seg); !kick {
		t.Fatal("ENABLE: no kick")
	}
	r.dev.SetNotify(false)
	if kick, _ := r.cycle(seg); kick {
		t.Fatal("DISABLE: kicked")
	}

	r = newRig(t, ring.Config{Size: 4, Layout: ring.PackedRing, EventIdx: true})
	seg = r.one(1)
	// serve lets the device take and return n chains, the driver reap them.
	serve := func(n int) {
		for range n {
			r.dev.Push(r.devPop().Head, 0)
		}
		for range n {
			r.pop()
		}
	}
	publish := func(n int) bool {
		for range n {
			r.add(seg...)
		}
		return r.q.Publish()
	}
	if !publish(1) { // event structure zero: ENABLE
		t.Fatal("first publish did not kick")
	}
	serve(1) // device event: DESC at slot 1, wrap 1
	if !publish(2) {
		t.Fatal("batch covering the event descriptor did not kick")
	}
	if publish(1) { // slot 3: the event is still at 1
		t.Fatal("kicked for a batch that did not reach the event descriptor")
	}
	serve(3) // event: slot 0, wrap 0
	if !publish(1) {
		t.Fatal("kick at the event descriptor of the next lap lost")
	}
	serve(1)
	if !publish(2) { // slots 1, 2
		t.Fatal("no kick")
	}
	serve(2)         // event: slot 3, wrap 0
	if !publish(2) { // slot 3 (wrap 0) and slot 0 (wrap 1): the event is behind the wrap
		t.Fatal("kick across the wrap lost")
	}
	if got := r.dev.Pending(); got != 2 {
		t.Fatalf("device sees %d chains", got)
	}
}

// Spec 2.8.10: the driver event suppression structure drives interrupts:
// ENABLE, DISABLE, and DESC at lastUsed + n - 1 for EnableInterruptsAfter.
func TestPackedInterruptSuppressionModes(t *testing.T) {
	r := newRig(t, ring.Config{Size: 4, Layout: ring.PackedRing})
	seg := r.one(1)
	if _, irq := r.cycle(seg); !irq {
		t.Fatal("ENABLE: no interrupt")
	}
	r.q.DisableInterrupts()
	if r.dev.AvailFlags() != 1 {
		t.Fatalf("driver event flags %d after DisableInterrupts, want DISABLE", r.dev.AvailFlags())
	}
	if _, irq := r.cycle(seg); irq {
		t.Fatal("DISABLE: interrupted")
	}
	if r.q.EnableInterrupts() || r.dev.AvailFlags() != 0 {
		t.Fatalf("EnableInterrupts: flags %d", r.dev.AvailFlags())
	}

	r = newRig(t, ring.Config{Size: 4, Layout: ring.PackedRing, EventIdx: true})
	seg = r.one(1)
	for range 4 {
		r.add(seg...)
	}
	r.q.Publish()
	if r.q.EnableInterruptsAfter(3) {
		t.Fatal("pending with nothing used")
	}
	if r.dev.AvailFlags() != 2 || r.dev.UsedEvent() != 2|1<<15 {
		t.Fatalf("driver event %d/%#x, want DESC at slot 2 wrap 1", r.dev.AvailFlags(), r.dev.UsedEvent())
	}
	for i := range 3 {
		if irq := r.dev.Push(r.devPop().Head, 0); irq != (i == 2) {
			t.Fatalf("push %d: interrupt %v", i, irq)
		}
	}
	if !r.q.EnableInterruptsAfter(3) {
		t.Fatal("3 chains used, EnableInterruptsAfter(3) not pending")
	}
}

// A device that writes flags the driver never wrote in this lap (USED set,
// AVAIL clear under wrap 1) breaks the queue.
func TestPackedInconsistentFlagsIsProtocolError(t *testing.T) {
	r := newRig(t, ring.Config{Size: 4, Layout: ring.PackedRing})
	r.add(r.one(1)...)
	r.q.Publish()
	d := r.hostileArea()
	binary.LittleEndian.PutUint16(d[14:], 1<<15)
	if pe := r.popViolation(); pe.What != "descriptor flags inconsistent with the used wrap counter" {
		t.Fatalf("error %+v", pe)
	}
	if !r.q.Pending() || !r.q.EnableInterrupts() {
		t.Fatal("broken queue does not report pending")
	}
	r.q.Reset()
	if r.q.Err() != nil {
		t.Fatal(r.q.Err())
	}
}

// A used element where nothing was made available (the device ran ahead),
// and one naming a chain still unpublished, break the queue.
func TestPackedUsedBeyondPublishedIsProtocolError(t *testing.T) {
	r := newRig(t, ring.Config{Size: 4, Layout: ring.PackedRing})
	d := r.hostileArea()
	binary.LittleEndian.PutUint16(d[14:], 1<<15|1<<7)
	if pe := r.popViolation(); pe.What != "used descriptor with no buffer made available" {
		t.Fatalf("error %+v", pe)
	}

	r = newRig(t, ring.Config{Size: 4, Layout: ring.PackedRing})
	r.add(r.one(1)...)
	r.q.Publish()
	r.devPop()
	hidden := r.add(r.one(1)...)
	d = r.hostileArea()
	binary.LittleEndian.PutUint32(d[12:], uint32(hidden)|(1<<15|1<<7)<<16) // slot 0: used, names the hidden id
	if pe := r.popViolation(); pe.What != "used id not in flight" || pe.Value != uint64(hidden) {
		t.Fatalf("error %+v", pe)
	}
}

// Add, Publish and Pop allocate nothing, on either layout.
func TestAddPublishPopAllocatesNothing(t *testing.T) {
	forBoth(t, ring.Config{Size: 8, EventIdx: true, Indirect: 2}, func(t *testing.T, r *rig) {
		one, two := r.one(8), r.rw(4, 4)
		bufs := make([]ringtest.Buf, 0, 4)
		cycle := func(segs []ring.Segment) {
			h, err := r.q.Add(segs)
			if err != nil {
				t.Fatal(err)
			}
			r.q.Publish()
			c, ok, err := r.dev.PopAppend(bufs[:0])
			if !ok || err != nil || c.Head != h {
				t.Fatalf("device pop %v %v", ok, err)
			}
			r.dev.Push(h, 1)
			if _, ok, err := r.q.Pop(); !ok || err != nil {
				t.Fatalf("pop %v %v", ok, err)
			}
			r.q.EnableInterrupts()
		}
		cycle(one) // warm the device's held slice
		if n := testing.AllocsPerRun(200, func() { cycle(one); cycle(two) }); n != 0 {
			t.Fatalf("%v allocations per two buffers", n)
		}
	})
}

// A used element moves the device on by its chain's descriptor count, so
// with a multi-descriptor chain in flight the n-th element is not at
// lastUsed + n - 1: EnableInterruptsAfter must not bet on that slot, or a
// completion that never crosses it goes without an interrupt.
func TestPackedEnableAfterWithLongChainLosesNoInterrupt(t *testing.T) {
	r := newRig(t, ring.Config{Size: 8, Layout: ring.PackedRing, EventIdx: true})
	long := append(r.rw(1, 1), r.one(1)...) // 3 descriptors, slots 0-2
	r.add(long...)
	b := r.add(r.one(1)...) // slot 3
	r.q.Publish()
	r.q.DisableInterrupts()
	a := r.devPop()
	r.devPop()
	r.dev.Push(a.Head, 0) // element at slot 0, device now at slot 3
	if r.q.EnableInterruptsAfter(2) {
		return // told to Pop: fine
	}
	if !r.dev.Push(b, 0) { // element at slot 3
		t.Fatalf("two chains used, no interrupt (driver event %d/%#x)", r.dev.AvailFlags(), r.dev.UsedEvent())
	}
}
