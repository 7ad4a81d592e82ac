package ring_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/vserial/vserial/dma/dmatest"
	"github.com/vserial/vserial/ring"
	"github.com/vserial/vserial/ring/ringtest"
)

func TestNewRejectsBadConfig(t *testing.T) {
	h := dmatest.NewHeap()
	for _, cfg := range []ring.Config{
		{Size: 0}, {Size: 3}, {Size: 100}, {Size: 1 << 15, Indirect: -1}, {Size: 8, Indirect: 9}, {Size: 8, Layout: 7},
	} {
		if q, err := ring.New(h, cfg); err == nil {
			t.Errorf("New(%+v) succeeded", cfg)
			q.Close()
		}
	}
	if n, _ := h.Live(); n != 0 {
		t.Errorf("failed New leaked %d allocations", n)
	}
	if _, err := ring.New(nil, ring.Config{Size: 8}); err == nil {
		t.Error("New with a nil allocator succeeded")
	}
}

// Spec 2.7.13/2.7.14: a chain goes out readable-first, comes back with the
// device's bytes, and every descriptor returns to the free list.
func TestChainRoundTripIsByteExact(t *testing.T) {
	for name, cfg := range allConfigs(8) {
		t.Run(name, func(t *testing.T) {
			r := newRig(t, cfg)
			in, out1, out2 := r.buf(5), r.buf(3), r.buf(4)
			copy(in.Bytes(), "hello")
			head := r.add(
				ring.Segment{Addr: in.Addr(), Len: 5},
				ring.Segment{Addr: out1.Addr(), Len: 3, Write: true},
				ring.Segment{Addr: out2.Addr(), Len: 4, Write: true},
			)
			if r.dev.Pending() != 0 {
				t.Fatal("chain visible to the device before Publish")
			}
			r.q.Publish()
			c := r.devPop()
			if c.Head != head || len(c.Bufs) != 3 {
				t.Fatalf("device got head %d with %d bufs; want %d with 3", c.Head, len(c.Bufs), head)
			}
			if string(c.Bufs[0].Data) != "hello" || c.Bufs[0].Write || !c.Bufs[1].Write || !c.Bufs[2].Write {
				t.Fatalf("device bufs %+v", c.Bufs)
			}
			copy(c.Bufs[1].Data, "wor")
			copy(c.Bufs[2].Data, "ld!!")
			r.dev.Push(c.Head, 7)
			u := r.pop()
			if u.Head != head || u.Len != 7 {
				t.Fatalf("Pop = %+v; want head %d len 7", u, head)
			}
			if got := string(out1.Bytes()) + string(out2.Bytes()[:4]); got != "world!!" {
				t.Fatalf("driver read %q", got)
			}
			if _, ok, err := r.q.Pop(); ok || err != nil {
				t.Fatalf("second Pop = %v, %v; want nothing", ok, err)
			}
			if r.q.NumFree() != int(cfg.Size) || r.q.InFlight() != 0 {
				t.Fatalf("NumFree %d InFlight %d after round trip", r.q.NumFree(), r.q.InFlight())
			}
			if s := r.q.Stats(); s.Added != 1 || s.Used != 1 || s.Violations != 0 || s.Clamped != 0 {
				t.Fatalf("Stats = %+v", s)
			}
		})
	}
}

func TestLegacyLayoutUsedRingAlignedTo4096(t *testing.T) {
	for _, c := range []struct {
		size uint16
		used uint64 // used ring offset from the block start (VIRTIO-NOTES §3.3)
	}{{1, 4096}, {32, 4096}, {128, 4096}, {256, 8192}, {1024, 20480}} {
		r := newRig(t, ring.Config{Size: c.size, Layout: ring.Legacy, EventIdx: true})
		base := r.q.DescAddr()
		if base%4096 != 0 {
			t.Errorf("size %d: block at %#x not page aligned", c.size, base)
		}
		if got := r.q.DriverAddr() - base; got != 16*uint64(c.size) {
			t.Errorf("size %d: avail at +%d, want +%d", c.size, got, 16*uint64(c.size))
		}
		if got := r.q.DeviceAddr() - base; got != c.used {
			t.Errorf("size %d: used at +%d, want +%d", c.size, got, c.used)
		}
		// The whole legacy block, avail_event included, is one allocation.
		if _, err := r.heap.Resolve(base, int(c.used)+6+8*int(c.size)); err != nil {
			t.Errorf("size %d: legacy block not contiguous: %v", c.size, err)
		}
	}
}

func TestModernLayoutAreasAreSeparateAndAligned(t *testing.T) {
	r := newRig(t, ring.Config{Size: 16, EventIdx: true})
	if r.q.DescAddr()%16 != 0 || r.q.DriverAddr()%4 != 0 || r.q.DeviceAddr()%4 != 0 {
		t.Fatalf("areas at %#x %#x %#x: want 16/4/4 alignment", r.q.DescAddr(), r.q.DriverAddr(), r.q.DeviceAddr())
	}
	// Spec sizes plus the 2 padding bytes that complete the 32-bit words.
	for _, a := range []struct {
		addr uint64
		n    int
	}{{r.q.DescAddr(), 16 * 16}, {r.q.DriverAddr(), 6 + 2*16 + 2}, {r.q.DeviceAddr(), 6 + 8*16 + 2}} {
		if _, err := r.heap.Resolve(a.addr, a.n); err != nil {
			t.Errorf("area %#x: %v", a.addr, err)
		}
	}
}

// Spec 2.7.5.3: a multi-segment chain behind VIRTIO_F_INDIRECT_DESC takes one
// ring descriptor; longer chains than the table fall back to direct.
func TestIndirectChainUsesOneDescriptor(t *testing.T) {
	r := newRig(t, ring.Config{Size: 8, Indirect: 3})
	h := r.add(append(r.rw(4, 4), r.one(2)...)...)
	if r.q.NumFree() != 7 {
		t.Fatalf("3-segment indirect chain took %d descriptors", 8-r.q.NumFree())
	}
	long := append(r.rw(1, 1), append(r.one(1), r.one(1)...)...)
	h2 := r.add(long...)
	if r.q.NumFree() != 3 {
		t.Fatalf("4-segment chain over a 3-entry table took %d descriptors, want 4 direct", 7-r.q.NumFree())
	}
	single := r.add(r.one(1)...)
	if r.q.NumFree() != 2 {
		t.Fatal("single segment did not take one direct descriptor")
	}
	r.q.Publish()
	for _, want := range []struct {
		head uint16
		n    int
	}{{h, 3}, {h2, 4}, {single, 1}} {
		c := r.devPop()
		if c.Head != want.head || len(c.Bufs) != want.n {
			t.Fatalf("device chain head %d with %d bufs; want %d with %d", c.Head, len(c.Bufs), want.head, want.n)
		}
		r.dev.Push(c.Head, 0)
	}
	for range 3 {
		r.pop()
	}
	if r.q.NumFree() != 8 {
		t.Fatalf("NumFree = %d after all returned", r.q.NumFree())
	}
}

func TestAddRejectsFullAndMalformedChains(t *testing.T) {
	r := newRig(t, ring.Config{Size: 4})
	if _, err := r.q.Add(nil); !errors.Is(err, ring.ErrBadChain) {
		t.Errorf("empty chain: %v", err)
	}
	wr := r.one(1)[0]
	rd := ring.Segment{Addr: wr.Addr, Len: 1}
	if _, err := r.q.Add([]ring.Segment{wr, rd}); !errors.Is(err, ring.ErrBadChain) {
		t.Errorf("readable after writable (spec 2.7.4.2): %v", err)
	}
	big := ring.Segment{Addr: wr.Addr, Len: 1<<32 - 1}
	if _, err := r.q.Add([]ring.Segment{big, big}); !errors.Is(err, ring.ErrBadChain) {
		t.Errorf("chain over 2^32-1 bytes: %v", err)
	}
	r.add(rd, rd, rd)
	if _, err := r.q.Add([]ring.Segment{rd, rd}); !errors.Is(err, ring.ErrFull) {
		t.Errorf("2 segments with 1 free: %v", err)
	}
	r.add(rd)
	if _, err := r.q.Add([]ring.Segment{rd}); !errors.Is(err, ring.ErrFull) {
		t.Errorf("full queue: %v", err)
	}
	if r.q.InFlight() != 2 || r.q.NumFree() != 0 {
		t.Errorf("InFlight %d NumFree %d", r.q.InFlight(), r.q.NumFree())
	}
	var heads []uint16
	r.q.InFlightHeads(func(h uint16) { heads = append(heads, h) })
	if len(heads) != 2 {
		t.Errorf("InFlightHeads = %v", heads)
	}
}

// Spec 2.7.13.3: several chains published with one idx update.
func TestPublishBatchesChains(t *testing.T) {
	r := newRig(t, ring.Config{Size: 8})
	for range 3 {
		r.add(r.one(1)...)
	}
	if !r.q.Publish() {
		t.Fatal("first Publish did not ask for a kick")
	}
	if r.dev.Pending() != 3 {
		t.Fatalf("device sees %d pending, want 3", r.dev.Pending())
	}
	if r.q.Publish() {
		t.Fatal("Publish with nothing new asked for a kick")
	}
}

func TestUsedIDOutOfRangeIsProtocolError(t *testing.T) {
	forBoth(t, ring.Config{Size: 8}, func(t *testing.T, r *rig) {
		r.add(r.one(4)...)
		r.q.Publish()
		c := r.devPop()
		r.dev.Misbehave(ringtest.Misbehaviour{BadID: true})
		r.dev.Push(c.Head, 1)
		pe := r.popViolation()
		if pe.What != "used id out of range" || pe.Value < 8 {
			t.Fatalf("error %+v", pe)
		}
		if r.q.Stats().Violations != 1 {
			t.Fatalf("Violations = %d", r.q.Stats().Violations)
		}
	})
}

func TestUsedIDNotInFlightIsProtocolError(t *testing.T) {
	forBoth(t, ring.Config{Size: 8}, func(t *testing.T, r *rig) {
		a := r.add(r.one(1)...)
		b := r.add(r.one(1)...)
		r.add(r.one(1)...)
		r.q.Publish()
		r.dev.Push(r.devPop().Head, 0)
		if u := r.pop(); u.Head != a {
			t.Fatalf("popped %d, want %d", u.Head, a)
		}
		if c := r.devPop(); c.Head != b {
			t.Fatalf("device popped %d, want %d", c.Head, b)
		}
		// The device completes b, then a (already returned) again.
		r.dev.Misbehave(ringtest.Misbehaviour{Duplicate: true})
		r.dev.Push(b, 0)
		if u := r.pop(); u.Head != b {
			t.Fatalf("popped %d, want %d", u.Head, b)
		}
		pe := r.popViolation()
		if pe.What != "used id not in flight" || pe.Value != uint64(a) {
			t.Fatalf("error %+v", pe)
		}
	})
}

// A chain added but not yet published is not the device's to return.
func TestUsedIDOfUnpublishedChainIsProtocolError(t *testing.T) {
	r := newRig(t, ring.Config{Size: 8})
	r.add(r.one(1)...)
	r.q.Publish()
	r.devPop()
	hidden := r.add(r.one(1)...)
	u := r.usedArea()
	u[4] = byte(hidden) // used.ring[0].id
	u[2] = 1            // used.idx = 1
	pe := r.popViolation()
	if pe.What != "used id not in flight" || pe.Value != uint64(hidden) {
		t.Fatalf("error %+v", pe)
	}
}

func TestUsedLenLongerThanPostedIsClamped(t *testing.T) {
	forBoth(t, ring.Config{Size: 8, Indirect: 4}, func(t *testing.T, r *rig) {
		r.add(r.rw(10, 6)...)
		r.q.Publish()
		c := r.devPop()
		r.dev.Misbehave(ringtest.Misbehaviour{LongLen: 100})
		r.dev.Push(c.Head, 2)
		if u := r.pop(); u.Len != 6 {
			t.Fatalf("Len = %d, want clamp to the 6 writable bytes posted (not the 10 readable)", u.Len)
		}
		if s := r.q.Stats(); s.Clamped != 1 || s.Violations != 0 {
			t.Fatalf("Stats = %+v", s)
		}
		// The switch was one-shot.
		r.add(r.one(3)...)
		r.q.Publish()
		r.dev.Push(r.devPop().Head, 3)
		if u := r.pop(); u.Len != 3 || r.q.Stats().Clamped != 1 {
			t.Fatalf("second Pop %+v, stats %+v", u, r.q.Stats())
		}
	})
}

func TestUsedIdxJumpIsProtocolError(t *testing.T) {
	for name, cfg := range allConfigs(4) {
		t.Run(name, func(t *testing.T) {
			r := newRig(t, cfg)
			r.add(r.one(1)...)
			r.add(r.one(1)...)
			r.q.Publish()
			if cfg.Layout == ring.PackedRing {
				// Packed: IdxJump repeats the element; the first is
				// genuine, the repeat names an id no longer in flight.
				r.dev.Misbehave(ringtest.Misbehaviour{IdxJump: 1})
				r.dev.Push(r.devPop().Head, 0)
				r.pop()
				if pe := r.popViolation(); pe.What != "used id not in flight" {
					t.Fatalf("error %+v", pe)
				}
				return
			}
			r.dev.Misbehave(ringtest.Misbehaviour{IdxJump: 5})
			r.dev.Push(r.devPop().Head, 0)
			pe := r.popViolation()
			if pe.What != "used idx advanced past the chains made available" || pe.Value != 6 {
				t.Fatalf("error %+v", pe)
			}
		})
	}
}

// A used idx that runs a whole queue ahead is caught even when it wraps u16.
func TestUsedIdxWrapAroundJumpIsProtocolError(t *testing.T) {
	r := newRig(t, ring.Config{Size: 4})
	r.add(r.one(1)...)
	r.q.Publish()
	r.devPop()
	r.dev.Misbehave(ringtest.Misbehaviour{IdxJump: 0xffff}) // 1 + 0xffff: a move of 0 mod 2^16
	r.dev.Push(0, 0)
	// used.idx = 1 + 0xffff = 0: no movement seen, nothing to pop.
	if _, ok, err := r.q.Pop(); ok || err != nil {
		t.Fatalf("Pop = %v, %v; an idx that wrapped to our own is indistinguishable from no progress", ok, err)
	}
	r.dev.Misbehave(ringtest.Misbehaviour{IdxJump: 0x8000})
	r.dev.Push(0, 0)
	r.popViolation()
}

func TestBrokenQueueStaysBrokenUntilReset(t *testing.T) {
	r := newRig(t, ring.Config{Size: 8, EventIdx: true})
	r.add(r.one(1)...)
	r.q.Publish()
	r.dev.Misbehave(ringtest.Misbehaviour{BadID: true})
	r.dev.Push(r.devPop().Head, 0)
	first := r.popViolation()
	for range 3 {
		if pe := r.popViolation(); pe != first {
			t.Fatalf("later Pop returned %v, want the same error %v", pe, first)
		}
	}
	if _, err := r.q.Add(r.one(1)); !errors.Is(err, ring.ErrDeviceProtocol) {
		t.Fatalf("Add on a broken queue: %v", err)
	}
	if r.q.Publish() {
		t.Fatal("Publish on a broken queue asked for a kick")
	}
	if !r.q.EnableInterrupts() {
		t.Fatal("EnableInterrupts on a broken queue did not report work (the error) pending")
	}
	if r.q.Stats().Violations != 1 {
		t.Fatalf("Violations = %d, want the one violation counted once", r.q.Stats().Violations)
	}
	if !errors.Is(r.q.Err(), ring.ErrDeviceProtocol) {
		t.Fatalf("Err() = %v", r.q.Err())
	}
}

func TestResetReturnsToCleanState(t *testing.T) {
	for name, cfg := range allConfigs(8) {
		t.Run(name, func(t *testing.T) {
			r := newRig(t, cfg)
			for range 3 {
				r.add(r.rw(2, 2)...)
			}
			r.q.Publish()
			r.q.DisableInterrupts()
			r.dev.Misbehave(ringtest.Misbehaviour{BadID: true})
			r.dev.Push(r.devPop().Head, 0)
			r.popViolation()

			r.q.Reset()
			if r.q.NumFree() != 8 || r.q.InFlight() != 0 || r.q.Err() != nil {
				t.Fatalf("after Reset NumFree %d InFlight %d Err %v", r.q.NumFree(), r.q.InFlight(), r.q.Err())
			}
			r.q.InFlightHeads(func(h uint16) { t.Errorf("head %d still in flight after Reset", h) })
			drvN, devN := 6+2*8, 6+8*8
			if cfg.Layout == ring.PackedRing {
				drvN, devN = 4, 4
			}
			for _, a := range []struct {
				addr uint64
				n    int
			}{{r.q.DescAddr(), 16 * 8}, {r.q.DriverAddr(), drvN}, {r.q.DeviceAddr(), devN}} {
				b, _ := r.heap.Resolve(a.addr, a.n)
				if !bytes.Equal(b, make([]byte, a.n)) {
					t.Fatalf("area %#x not zeroed by Reset", a.addr)
				}
			}
			// A fresh device over the reset memory sees a working queue.
			dev, err := ringtest.NewQueue(r.heap, ringtest.ConfigFor(r.q, cfg))
			if err != nil {
				t.Fatal(err)
			}
			r.dev = dev
			h := r.add(r.rw(1, 1)...)
			if !r.q.Publish() {
				t.Fatal("first Publish after Reset did not ask for a kick")
			}
			c := r.devPop()
			if !r.dev.Push(c.Head, 1) {
				t.Fatal("first used buffer after Reset did not ask for an interrupt")
			}
			if u := r.pop(); u.Head != h || u.Len != 1 {
				t.Fatalf("Pop after Reset = %+v", u)
			}
		})
	}
}

// The largest split queue (spec 2.7: 32768) works in both layouts, with
// indices wrapping past 65535.
func TestLargestQueueSizeWrapsIndices(t *testing.T) {
	for _, layout := range []ring.Layout{ring.Modern, ring.Legacy} {
		r := newRig(t, ring.Config{Size: 32768, Layout: layout, EventIdx: true, Indirect: 2})
		seg := r.rw(1, 1)
		for round := range 3 {
			var used []ring.Used
			for range 32768 {
				used = append(used, ring.Used{Head: r.add(seg...), Len: 1})
			}
			if _, err := r.q.Add(seg); !errors.Is(err, ring.ErrFull) {
				t.Fatalf("round %d: Add on a full queue: %v", round, err)
			}
			r.q.Publish()
			for range 32768 {
				r.devPop()
			}
			r.dev.PushN(used)
			for i := range 32768 {
				if u := r.pop(); u.Head != used[i].Head || u.Len != 1 {
					t.Fatalf("round %d: pop %d = %+v, want %+v", round, i, u, used[i])
				}
			}
			if r.q.NumFree() != 32768 {
				t.Fatalf("round %d: NumFree %d", round, r.q.NumFree())
			}
		}
	}
}

func TestClosedQueueRefusesWork(t *testing.T) {
	h := dmatest.NewHeap()
	q, err := ring.New(h, ring.Config{Size: 4, EventIdx: true, Indirect: 2})
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	if n, _ := h.Live(); n != 0 {
		t.Fatalf("Close left %d allocations", n)
	}
	if _, err := q.Add([]ring.Segment{{Addr: 1, Len: 1}}); !errors.Is(err, ring.ErrClosed) {
		t.Fatalf("Add after Close: %v", err)
	}
	if _, _, err := q.Pop(); !errors.Is(err, ring.ErrClosed) {
		t.Fatalf("Pop after Close: %v", err)
	}
	q.DisableInterrupts()
	q.Reset()
	if q.Publish() || !q.EnableInterrupts() || !errors.Is(q.Err(), ring.ErrClosed) {
		t.Fatal("closed queue reported no error pending")
	}
	if err := q.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestFootprintIsWhatNewAllocates(t *testing.T) {
	for _, cfg := range []ring.Config{
		{Size: 1, Layout: ring.Modern}, {Size: 128, Layout: ring.Modern}, {Size: 256, Layout: ring.Modern, EventIdx: true},
		{Size: 8, Layout: ring.Modern, Indirect: 4}, {Size: 128, Layout: ring.Legacy}, {Size: 1024, Layout: ring.Legacy},
		{Size: 1, Layout: ring.PackedRing}, {Size: 256, Layout: ring.PackedRing, EventIdx: true}, {Size: 7, Layout: ring.PackedRing, Indirect: 4},
	} {
		h := dmatest.NewHeap()
		q, err := newVQ(h, cfg)
		if err != nil {
			t.Fatal(err)
		}
		if _, got := h.Live(); got != ring.Footprint(cfg) {
			t.Errorf("%+v: New allocated %d bytes, Footprint says %d", cfg, got, ring.Footprint(cfg))
		}
		q.Close()
	}
}
