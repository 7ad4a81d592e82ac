package ring_test

import (
	"fmt"
	"testing"

	"github.com/vserial/vserial/dma/dmatest"
	"github.com/vserial/vserial/ring"
	"github.com/vserial/vserial/ring/ringtest"
)

// benchRig is a queue with the device called inline; the device validates
// chains but does not resolve their bytes, so the numbers are the ring's.
func benchRig(b *testing.B, cfg ring.Config) (vq, ringtest.Queue, []ring.Segment) {
	h := dmatest.NewHeap()
	q, err := newVQ(h, cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { q.Close() })
	dc := ringtest.ConfigFor(q, cfg)
	dc.SkipData = true
	dev, err := ringtest.NewQueue(h, dc)
	if err != nil {
		b.Fatal(err)
	}
	buf, err := h.Alloc(4096, 8)
	if err != nil {
		b.Fatal(err)
	}
	return q, dev, []ring.Segment{{Addr: buf.Addr(), Len: 4096, Write: true}}
}

// BenchmarkAddPublishPop moves buffers through the ring and reports the cost
// per buffer (one b.Loop iteration is one buffer).
//
// Sub-benchmarks are layout/side/batchK:
//   - side "driver": the driver's Add, Publish and Pop, with the device
//     reduced to the least a device must do to return buffers: PushN writes
//     the used entries and stores used.idx once per batch (one atomic store,
//     an XCHG on amd64). It never reads the avail ring or walks a chain.
//   - side "device": the same plus the test device's full work per buffer
//     (PopAppend reads avail.idx and the ring entry and walks the chain), so
//     device − driver is the test device's share.
//   - batchK: Publish, the device's used.idx update and the driver's
//     reaping happen once every K buffers, as on a busy queue; batch1 is a
//     lone buffer, paying both full barriers (driver's avail.idx store and the
//     device's used.idx store) for one buffer.
func BenchmarkAddPublishPop(b *testing.B) {
	for _, c := range []struct {
		name string
		cfg  ring.Config
	}{
		{"modern", ring.Config{Size: 256}},
		{"modern-eventidx", ring.Config{Size: 256, EventIdx: true}},
		{"legacy", ring.Config{Size: 128, Layout: ring.Legacy}},
		{"packed", ring.Config{Size: 256, Layout: ring.PackedRing}},
		{"packed-eventidx", ring.Config{Size: 256, Layout: ring.PackedRing, EventIdx: true}},
	} {
		for _, side := range []string{"driver", "device"} {
			for _, batch := range []int{1, 8, 32} {
				b.Run(fmt.Sprintf("%s/%s/batch%d", c.name, side, batch), func(b *testing.B) {
					benchBatch(b, c.cfg, side == "device", batch)
				})
			}
		}
	}
}

func benchBatch(b *testing.B, cfg ring.Config, device bool, batch int) {
	q, dev, seg := benchRig(b, cfg)
	dev.SetNotify(false)
	q.DisableInterrupts()
	bufs := make([]ringtest.Buf, 0, 4)
	used := make([]ring.Used, batch)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		h, err := q.Add(seg)
		if err != nil {
			b.Fatal(err)
		}
		used[i] = ring.Used{Head: h, Len: 1}
		if i++; i < batch {
			continue
		}
		i = 0
		q.Publish()
		if device {
			for j := range batch {
				ch, ok, err := dev.PopAppend(bufs[:0])
				if !ok || err != nil || ch.Head != used[j].Head {
					b.Fatal(ok, err, ch.Head, used[j].Head)
				}
			}
		}
		if batch == 1 {
			dev.Push(used[0].Head, used[0].Len)
		} else {
			dev.PushN(used)
		}
		for j := range batch {
			u, ok, err := q.Pop()
			if !ok || err != nil || u.Head != used[j].Head {
				b.Fatal(ok, err, u.Head, used[j].Head)
			}
		}
	}
}

// BenchmarkChain4 moves chains of four segments (two readable, two
// writable) one at a time, device included: direct (four ring
// descriptors) against indirect (one ring descriptor and a four-entry
// table the device reads through one more address). Per chain. The
// indirect form is a ring-space saving (4x more chains in flight), not a
// per-chain speed-up: the table costs the same descriptor writes plus the
// pointing descriptor.
func BenchmarkChain4(b *testing.B) {
	for _, c := range []struct {
		name string
		cfg  ring.Config
	}{
		{"split/direct", ring.Config{Size: 256, EventIdx: true}},
		{"split/indirect", ring.Config{Size: 256, EventIdx: true, Indirect: 4}},
		{"packed/direct", ring.Config{Size: 256, EventIdx: true, Layout: ring.PackedRing}},
		{"packed/indirect", ring.Config{Size: 256, EventIdx: true, Layout: ring.PackedRing, Indirect: 4}},
	} {
		b.Run(c.name, func(b *testing.B) {
			q, dev, seg := benchRig(b, c.cfg)
			dev.SetNotify(false)
			q.DisableInterrupts()
			a := seg[0].Addr
			segs := []ring.Segment{{Addr: a, Len: 1024}, {Addr: a + 1024, Len: 1024},
				{Addr: a + 2048, Len: 1024, Write: true}, {Addr: a + 3072, Len: 1024, Write: true}}
			bufs := make([]ringtest.Buf, 0, 4)
			b.ReportAllocs()
			for b.Loop() {
				h, err := q.Add(segs)
				if err != nil {
					b.Fatal(err)
				}
				q.Publish()
				if _, ok, err := dev.PopAppend(bufs[:0]); !ok || err != nil {
					b.Fatal(ok, err)
				}
				dev.Push(h, 1)
				if _, ok, err := q.Pop(); !ok || err != nil {
					b.Fatal(ok, err)
				}
			}
		})
	}
}
