package ring_test

import (
	"errors"
	"testing"

	"github.com/vserial/vserial/ring"
	"github.com/vserial/vserial/ring/ringtest"
)

const fuzzSize = 8

// fuzzConfig decodes the layout and features from the fuzzer's flag byte;
// packed selects the packed ring (then flags&2 is ignored).
func fuzzConfig(flags uint8, packed bool) ring.Config {
	cfg := ring.Config{Size: fuzzSize, EventIdx: flags&1 != 0}
	switch {
	case packed:
		cfg.Layout = ring.PackedRing
	case flags&2 != 0:
		cfg.Layout = ring.Legacy
	}
	if flags&4 != 0 {
		cfg.Indirect = 3
	}
	return cfg
}

// fuzzState builds a queue with nAdd chains added (the last one left
// unpublished when flags&8), and lets a well-behaved device complete
// (flags>>4)&7 of them, so the used ring holds a state ringtest produced.
func fuzzState(t testing.TB, flags, nAdd uint8, packed bool) (r *rig, posted map[uint16]uint32, unpublished int) {
	r = newRig(t, fuzzConfig(flags, packed))
	posted = map[uint16]uint32{}
	r.ndesc = map[uint16]int{}
	unpublished = -1
	n := int(nAdd) % (fuzzSize + 1)
	for k := range n {
		segs := r.rw(1+k, 2+k)
		if k%3 == 2 {
			segs = append(segs, r.one(3)...)
		}
		h, err := r.q.Add(segs)
		if errors.Is(err, ring.ErrFull) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		r.ndesc[h] = len(segs)
		if len(segs) <= r.cfg.Indirect {
			r.ndesc[h] = 1
		}
		var w uint32
		for _, s := range segs {
			if s.Write {
				w += s.Len
			}
		}
		if k == n-1 && flags&8 != 0 {
			unpublished = int(h)
			r.lastSegs, r.lastNdesc = segs, r.ndesc[h]
			break
		}
		posted[h] = w
		r.q.Publish()
	}
	if unpublished >= 0 {
		// Added after the last Publish: not the device's to see.
		delete(posted, uint16(unpublished))
	}
	for range (flags >> 4) & 7 {
		c, ok, err := r.dev.Pop()
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
		r.dev.Push(c.Head, c.Writable())
	}
	return r, posted, unpublished
}

// FuzzHostileUsedRing lets a hostile device write arbitrary used ring
// contents, used idx and avail_event over a state a well-behaved device left.
// The driver must not panic, must return only errors matching
// ErrDeviceProtocol, must never hand out a head that was not in flight or a
// length beyond what was posted, and must keep its descriptor accounting.
func FuzzHostileUsedRing(f *testing.F) { fuzzHostile(f, false) }

// FuzzHostilePackedRing is FuzzHostileUsedRing for the packed ring: the
// hostile device writes arbitrary bytes over the descriptor ring (ids,
// lengths, AVAIL/USED flags) and the device event suppression word.
func FuzzHostilePackedRing(f *testing.F) { fuzzHostile(f, true) }

// hostileArea is what a hostile device may write: the split ring's device
// area, or the packed ring's descriptor ring.
func (r *rig) hostileArea() []byte {
	if r.cfg.Layout != ring.PackedRing {
		return r.usedArea()
	}
	r.t.Helper()
	b, err := r.heap.Resolve(r.q.DescAddr(), 16*int(r.cfg.Size))
	if err != nil {
		r.t.Fatal(err)
	}
	return b
}

// setEventWord writes the device's suppression word: avail_event for the
// split ring, the device event off_wrap (and flags from the flag byte) for
// the packed ring.
func (r *rig) setEventWord(ev uint16, flags uint8) {
	if r.cfg.Layout == ring.PackedRing {
		b, err := r.heap.Resolve(r.q.DeviceAddr(), 4)
		if err != nil {
			r.t.Fatal(err)
		}
		b[0], b[1], b[2], b[3] = byte(ev), byte(ev>>8), (flags>>5)&3, 0
		return
	}
	area := r.usedArea()
	area[4+8*fuzzSize] = byte(ev)
	area[5+8*fuzzSize] = byte(ev >> 8)
}

func fuzzHostile(f *testing.F, packed bool) {
	// Seeds: areas as ringtest leaves them, well-behaved and after each
	// misbehaviour switch.
	for i, m := range []ringtest.Misbehaviour{{}, {BadID: true}, {Duplicate: true}, {LongLen: 1000}, {IdxJump: 3}, {DelayPublish: true}} {
		for _, flags := range []uint8{0x30, 0x31, 0x27, 0x7e} {
			r, _, _ := fuzzState(f, flags, 6, packed)
			r.dev.Misbehave(m)
			if c, ok, _ := r.dev.Pop(); ok {
				r.dev.Push(c.Head, c.Writable())
				r.dev.Push(c.Head, 1)
			}
			snap := append([]byte(nil), r.hostileArea()...)
			f.Add(flags, uint8(6), snap, uint16(i), snap)
		}
	}
	f.Add(uint8(0x11), uint8(4), []byte{0, 0, 0xff, 0xff}, uint16(0xffff), []byte{})
	f.Add(uint8(0x09), uint8(3), []byte{0, 0, 1, 0, 2, 0, 0, 0, 0xff, 0xff, 0xff, 0xff}, uint16(1), []byte{0, 0, 3, 0, 1, 0, 0, 0, 5, 0, 0, 0})

	f.Fuzz(func(t *testing.T, flags, nAdd uint8, used []byte, availEvent uint16, more []byte) {
		r, posted, unpublished := fuzzState(t, flags, nAdd, packed)
		area := r.hostileArea()
		copy(area, used) // the hostile device overwrites a prefix
		if packed || len(used) <= 4+8*fuzzSize {
			// and, independently, its suppression word.
			r.setEventWord(availEvent, flags)
		}
		if flags&0x80 != 0 {
			r.q.DisableInterrupts()
		}
		var broken error
		drainHostile := func() {
			for range 2 * fuzzSize {
				u, ok, err := r.q.Pop()
				if err != nil {
					if !errors.Is(err, ring.ErrDeviceProtocol) {
						t.Fatalf("Pop error %v does not match ErrDeviceProtocol", err)
					}
					if ok {
						t.Fatal("Pop returned ok with an error")
					}
					if broken != nil && err != broken {
						t.Fatalf("broken queue changed its error from %v to %v", broken, err)
					}
					broken = err
					continue
				}
				if broken != nil {
					t.Fatalf("Pop succeeded (%+v, %v) after the queue broke with %v", u, ok, broken)
				}
				if !ok {
					return
				}
				w, inFlight := posted[u.Head]
				if !inFlight {
					t.Fatalf("Pop handed out head %d, not in flight (unpublished %d)", u.Head, unpublished)
				}
				if u.Len > w {
					t.Fatalf("head %d: len %d beyond the %d writable bytes posted", u.Head, u.Len, w)
				}
				delete(posted, u.Head)
			}
		}
		// checkAccounting: every chain not popped is still listed, and the
		// free list holds exactly the descriptors they do not.
		checkAccounting := func() {
			if broken != nil {
				if r.q.Stats().Violations != 1 {
					t.Fatalf("Violations = %d, want 1", r.q.Stats().Violations)
				}
				return
			}
			used, descs := 0, 0
			r.q.InFlightHeads(func(h uint16) {
				used++
				descs += r.ndesc[h]
				if _, ok := posted[h]; !ok && int(h) != unpublished {
					t.Errorf("InFlightHeads lists %d, which was popped", h)
				}
			})
			want := len(posted)
			if unpublished >= 0 {
				want++
			}
			if used != want || r.q.InFlight() != want {
				t.Fatalf("in flight: %d heads listed, InFlight %d, want %d", used, r.q.InFlight(), want)
			}
			if r.q.NumFree() != fuzzSize-descs {
				t.Fatalf("NumFree %d with %d descriptors in flight", r.q.NumFree(), descs)
			}
		}

		drainHostile()
		pending := r.q.EnableInterrupts()
		if broken != nil && !pending {
			t.Fatal("broken queue reported nothing pending")
		}
		_ = r.q.Publish() // reads the hostile avail_event / used.flags: any answer, no panic
		checkAccounting()
		if broken != nil || len(more) == 0 {
			return
		}

		// Round two: the unpublished chain went out with that Publish; reuse
		// the freed descriptors for new chains, then let the device lie again
		// over whatever state the first round left.
		if unpublished >= 0 {
			posted[uint16(unpublished)] = 0
			for _, s := range r.lastSegs {
				if s.Write {
					posted[uint16(unpublished)] += s.Len
				}
			}
			r.ndesc[uint16(unpublished)] = r.lastNdesc
			unpublished = -1
		}
		for k := range 3 {
			segs := r.rw(1, 1+k)
			h, err := r.q.Add(segs)
			if errors.Is(err, ring.ErrFull) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			posted[h] = uint32(1 + k)
			r.ndesc[h] = 1
			if r.cfg.Indirect < 2 {
				r.ndesc[h] = 2
			}
		}
		r.q.Publish()
		copy(area, more)
		drainHostile()
		checkAccounting()
	})
}
