package ring_test

import (
	"errors"
	"testing"

	"github.com/vserial/vserial/dma"
	"github.com/vserial/vserial/dma/dmatest"
	"github.com/vserial/vserial/ring"
	"github.com/vserial/vserial/ring/ringtest"
)

// vq is the driver side of either layout: ring.Queue or ring.Packed.
type vq interface {
	ringtest.Areas
	Size() uint16
	Add(segs []ring.Segment) (uint16, error)
	Publish() bool
	Pop() (ring.Used, bool, error)
	Pending() bool
	EnableInterrupts() bool
	EnableInterruptsAfter(n uint16) bool
	DisableInterrupts()
	NumFree() int
	InFlight() int
	InFlightHeads(fn func(head uint16))
	Reset()
	Err() error
	Stats() ring.Stats
	Close() error
}

var (
	_ vq = (*ring.Queue)(nil)
	_ vq = (*ring.Packed)(nil)
)

// newVQ creates the driver queue cfg.Layout names.
func newVQ(alloc dma.Allocator, cfg ring.Config) (vq, error) {
	if cfg.Layout == ring.PackedRing {
		return ring.NewPacked(alloc, cfg)
	}
	return ring.New(alloc, cfg)
}

// rig is a driver queue and a device over the same heap memory.
type rig struct {
	t    testing.TB
	heap *dmatest.Heap
	cfg  ring.Config
	q    vq
	dev  ringtest.Queue
	bufs []dma.Region
	// ndesc records ring descriptors per head, for tests that check the
	// free list's accounting.
	ndesc map[uint16]int
	// lastSegs and lastNdesc describe the chain fuzzState left unpublished.
	lastSegs  []ring.Segment
	lastNdesc int
}

func newRig(t testing.TB, cfg ring.Config) *rig {
	t.Helper()
	h := dmatest.NewHeap()
	q, err := newVQ(h, cfg)
	if err != nil {
		t.Fatalf("new queue (%+v): %v", cfg, err)
	}
	dev, err := ringtest.NewQueue(h, ringtest.ConfigFor(q, cfg))
	if err != nil {
		t.Fatalf("ringtest.NewQueue: %v", err)
	}
	r := &rig{t: t, heap: h, cfg: cfg, q: q, dev: dev}
	t.Cleanup(func() {
		for _, b := range r.bufs {
			if err := h.Free(b); err != nil {
				t.Errorf("free buffer: %v", err)
			}
		}
		if err := q.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if err := q.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
		if n, sz := h.Live(); n != 0 {
			t.Errorf("leaked %d allocations (%d bytes)", n, sz)
		}
	})
	return r
}

// buf allocates a device-visible buffer of n bytes.
func (r *rig) buf(n int) dma.Region {
	r.t.Helper()
	b, err := r.heap.Alloc(n, 8)
	if err != nil {
		r.t.Fatal(err)
	}
	r.bufs = append(r.bufs, b)
	return b
}

// add adds segs and fails the test on error.
func (r *rig) add(segs ...ring.Segment) uint16 {
	r.t.Helper()
	h, err := r.q.Add(segs)
	if err != nil {
		r.t.Fatalf("Add(%d segments): %v", len(segs), err)
	}
	return h
}

// devPop pops one chain on the device side and fails unless there is one.
func (r *rig) devPop() ringtest.Chain {
	r.t.Helper()
	c, ok, err := r.dev.Pop()
	if err != nil || !ok {
		r.t.Fatalf("device Pop = %v, %v; want a chain", ok, err)
	}
	return c
}

// pop pops one used chain and fails unless there is one.
func (r *rig) pop() ring.Used {
	r.t.Helper()
	u, ok, err := r.q.Pop()
	if err != nil || !ok {
		r.t.Fatalf("Pop = %+v, %v, %v; want a used chain", u, ok, err)
	}
	return u
}

// popViolation pops and requires a protocol error.
func (r *rig) popViolation() *ring.ProtocolError {
	r.t.Helper()
	u, ok, err := r.q.Pop()
	if !errors.Is(err, ring.ErrDeviceProtocol) {
		r.t.Fatalf("Pop = %+v, %v, %v; want an error matching ErrDeviceProtocol", u, ok, err)
	}
	if ok {
		r.t.Fatalf("Pop returned ok with error %v", err)
	}
	var pe *ring.ProtocolError
	if !errors.As(err, &pe) {
		r.t.Fatalf("error %T is not a *ring.ProtocolError", err)
	}
	return pe
}

// rw returns a chain of one readable and one writable segment.
func (r *rig) rw(rd, wr int) []ring.Segment {
	a, b := r.buf(rd), r.buf(wr)
	return []ring.Segment{{Addr: a.Addr(), Len: uint32(rd)}, {Addr: b.Addr(), Len: uint32(wr), Write: true}}
}

// one returns a chain of one writable segment.
func (r *rig) one(n int) []ring.Segment {
	b := r.buf(n)
	return []ring.Segment{{Addr: b.Addr(), Len: uint32(n), Write: true}}
}

// usedArea returns the device area's bytes, for tests that play a device
// writing by hand.
func (r *rig) usedArea() []byte {
	r.t.Helper()
	b, err := r.heap.Resolve(r.q.DeviceAddr(), 6+8*int(r.cfg.Size)+2)
	if err != nil {
		r.t.Fatal(err)
	}
	return b
}

// allConfigs lists the layouts and features every scenario runs under.
func allConfigs(size uint16) map[string]ring.Config {
	return map[string]ring.Config{
		"modern":                {Size: size},
		"modern/eventidx":       {Size: size, EventIdx: true},
		"modern/indirect":       {Size: size, Indirect: 4},
		"legacy":                {Size: size, Layout: ring.Legacy},
		"legacy/eventidx/indir": {Size: size, Layout: ring.Legacy, EventIdx: true, Indirect: 4},
		"packed":                {Size: size, Layout: ring.PackedRing},
		"packed/eventidx":       {Size: size, Layout: ring.PackedRing, EventIdx: true},
		"packed/eventidx/indir": {Size: size, Layout: ring.PackedRing, EventIdx: true, Indirect: 4},
	}
}

// forBoth runs fn on a fresh rig for cfg as a split ring and as a packed
// ring (cfg.Layout replaced by PackedRing).
func forBoth(t *testing.T, cfg ring.Config, fn func(t *testing.T, r *rig)) {
	t.Helper()
	packed := cfg
	packed.Layout = ring.PackedRing
	for _, c := range []struct {
		name string
		cfg  ring.Config
	}{{"split", cfg}, {"packed", packed}} {
		t.Run(c.name, func(t *testing.T) { fn(t, newRig(t, c.cfg)) })
	}
}
