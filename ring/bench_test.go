package ring_test

import (
	"testing"

	"github.com/vserial/vserial/dma/dmatest"
	"github.com/vserial/vserial/ring"
	"github.com/vserial/vserial/ring/ringtest"
)

// benchRig is a queue with the device called inline; the device validates
// chains but does not resolve their bytes, so the numbers are the ring's.
func benchRig(b *testing.B, cfg ring.Config) (*ring.Queue, *ringtest.Device, []ring.Segment) {
	h := dmatest.NewHeap()
	q, err := ring.New(h, cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { q.Close() })
	dc := ringtest.ConfigFor(q, cfg)
	dc.SkipData = true
	dev, err := ringtest.New(h, dc)
	if err != nil {
		b.Fatal(err)
	}
	buf, err := h.Alloc(4096, 8)
	if err != nil {
		b.Fatal(err)
	}
	return q, dev, []ring.Segment{{Addr: buf.Addr(), Len: 4096, Write: true}}
}

// BenchmarkAddPublishPop sends one buffer at a time through the ring: Add,
// Publish, device pop and push (inline), Pop. Reported per buffer.
func BenchmarkAddPublishPop(b *testing.B) {
	for _, c := range []struct {
		name string
		cfg  ring.Config
	}{
		{"modern", ring.Config{Size: 256}},
		{"modern/eventidx", ring.Config{Size: 256, EventIdx: true}},
		{"legacy", ring.Config{Size: 128, Layout: ring.Legacy}},
	} {
		b.Run(c.name, func(b *testing.B) {
			q, dev, seg := benchRig(b, c.cfg)
			dev.SetNotify(false)
			q.DisableInterrupts()
			bufs := make([]ringtest.Buf, 0, 4)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := q.Add(seg); err != nil {
					b.Fatal(err)
				}
				q.Publish()
				ch, ok, err := dev.PopAppend(bufs[:0])
				if !ok || err != nil {
					b.Fatal(ok, err)
				}
				dev.Push(ch.Head, 1)
				if _, ok, err := q.Pop(); !ok || err != nil {
					b.Fatal(ok, err)
				}
			}
		})
	}
}

// BenchmarkAddPublishPopBatch32 moves 32 buffers per Publish and per used idx
// update, as a busy queue does. Reported per buffer.
func BenchmarkAddPublishPopBatch32(b *testing.B) {
	const batch = 32
	q, dev, seg := benchRig(b, ring.Config{Size: 256, EventIdx: true})
	dev.SetNotify(false)
	q.DisableInterrupts()
	bufs := make([]ringtest.Buf, 0, 4)
	used := make([]ring.Used, batch)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, err := q.Add(seg); err != nil {
			b.Fatal(err)
		}
		if i++; i < batch {
			continue
		}
		i = 0
		q.Publish()
		for j := range batch {
			ch, ok, err := dev.PopAppend(bufs[:0])
			if !ok || err != nil {
				b.Fatal(ok, err)
			}
			used[j] = ring.Used{Head: ch.Head, Len: 1}
		}
		dev.PushN(used)
		for range batch {
			if _, ok, err := q.Pop(); !ok || err != nil {
				b.Fatal(ok, err)
			}
		}
	}
}

// BenchmarkDriverOnly measures the driver's share: Add, Publish and Pop, with
// the device reduced to Push (one used entry and one atomic store of used.idx;
// it never walks the chain).
func BenchmarkDriverOnly(b *testing.B) {
	q, dev, seg := benchRig(b, ring.Config{Size: 256})
	dev.SetNotify(false)
	q.DisableInterrupts()
	b.ReportAllocs()
	for b.Loop() {
		h, err := q.Add(seg)
		if err != nil {
			b.Fatal(err)
		}
		q.Publish()
		dev.Push(h, 1)
		if _, ok, err := q.Pop(); !ok || err != nil {
			b.Fatal(ok, err)
		}
	}
}
