package ring_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/vserial/vserial/ring"
	"github.com/vserial/vserial/ring/ringtest"
)

// stallGuard is how long a side may sleep waiting for a kick or interrupt
// before the test declares it lost. It is a hang detector, not a speed
// check: a correct ring wakes its peer in microseconds.
const stallGuard = 2 * time.Minute

// soak runs a driver goroutine (this one) and a device goroutine over one
// queue. Each chain carries random bytes in 1..maxSegs segments; the device
// echoes the readable bytes, transformed, into the writable ones, and the
// driver checks them byte for byte. Both sides sleep only when the ring says
// they may: the driver on an interrupt after EnableInterrupts reported
// nothing pending, the device on a kick after re-enabling notifications found
// nothing pending. A lost notification therefore stalls the test.
func soak(t *testing.T, cfg ring.Config, chains, maxSegs int, seed uint64) {
	r := newRig(t, cfg)
	const segMax = 16
	n := int(cfg.Size)
	// In-flight chains are consecutive sequence numbers (the device completes
	// in order) and never more than n, so chain seq uses slot seq % n.
	pool := r.buf(n * maxSegs * segMax)
	irq := make(chan struct{}, 1)
	done := make(chan struct{})
	devErr := make(chan error, 1)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		devErr <- runDevice(r.dev, irq, done)
	}()
	defer func() {
		close(done)
		wg.Wait()
	}()

	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	type posted struct {
		seq      int
		rd, wr   int // readable, writable byte counts
		segs     []ring.Segment
		readable []byte
	}
	byHead := make([]posted, n)
	sent, received := 0, 0
	segs := make([]ring.Segment, 0, maxSegs)
	var kicks, irqs int
	for received < chains {
		progress := false
		for sent < chains && sent-received < n {
			k := 1 + rng.IntN(maxSegs)
			if k > n {
				k = n
			}
			nr := rng.IntN(k + 1) // readable segments; the rest writable
			base := (sent % n) * maxSegs * segMax
			segs = segs[:0]
			var p posted
			for i := range k {
				l := 1 + rng.IntN(segMax)
				off := base + i*segMax
				b := pool.Bytes()[off : off+l]
				s := ring.Segment{Addr: pool.Addr() + uint64(off), Len: uint32(l), Write: i >= nr}
				if s.Write {
					clear(b)
					p.wr += l
				} else {
					for j := range b {
						b[j] = byte(rng.Uint32())
					}
					p.readable = append(p.readable, b...)
					p.rd += l
				}
				segs = append(segs, s)
			}
			h, err := r.q.Add(segs)
			if errors.Is(err, ring.ErrFull) {
				break
			}
			if err != nil {
				t.Fatalf("Add: %v", err)
			}
			p.seq, p.segs = sent, append([]ring.Segment(nil), segs...)
			byHead[h] = p
			sent++
			progress = true
		}
		if r.q.Publish() {
			kicks++
			r.dev.Kick()
		}
		for {
			u, ok, err := r.q.Pop()
			if err != nil {
				t.Fatalf("Pop after %d chains: %v", received, err)
			}
			if !ok {
				break
			}
			p := byHead[u.Head]
			if p.seq != received {
				t.Fatalf("chain %d came back as #%d", p.seq, received)
			}
			want := min(p.rd, p.wr)
			if int(u.Len) != want {
				t.Fatalf("chain %d: used len %d, want %d", p.seq, u.Len, want)
			}
			got := make([]byte, 0, p.wr)
			for _, s := range p.segs {
				if s.Write {
					off := int(s.Addr - pool.Addr())
					got = append(got, pool.Bytes()[off:off+int(s.Len)]...)
				}
			}
			for i := range want {
				if got[i] != p.readable[i]^0x5a {
					t.Fatalf("chain %d: byte %d = %#x, want %#x", p.seq, i, got[i], p.readable[i]^0x5a)
				}
			}
			received++
			progress = true
		}
		if progress {
			continue
		}
		// Nothing to do: sleep only if the ring says nothing is pending.
		// Interrupts that arrived while we were busy are dropped first, so
		// a stale one cannot hide an interrupt the ring failed to ask for:
		// whatever they announced, EnableInterrupts must now report.
		drain(irq)
		if r.q.EnableInterrupts() {
			continue
		}
		select {
		case <-irq:
			irqs++
			r.q.DisableInterrupts()
		case err := <-devErr:
			t.Fatalf("device stopped: %v", err)
		case <-time.After(stallGuard):
			t.Fatalf("driver stalled waiting for an interrupt: sent %d received %d, device used idx unknown (lost notification)", sent, received)
		}
	}
	if r.q.NumFree() != n || r.q.InFlight() != 0 {
		t.Fatalf("end: NumFree %d InFlight %d; want %d, 0", r.q.NumFree(), r.q.InFlight(), n)
	}
	s := r.q.Stats()
	if s.Added != uint64(chains) || s.Used != uint64(chains) || s.Violations != 0 || s.Clamped != 0 {
		t.Fatalf("Stats %+v", s)
	}
	t.Logf("%d chains, %d kicks, %d interrupt waits", chains, kicks, irqs)
}

// runDevice serves the queue until done: it echoes readable bytes ^ 0x5a into
// the writable buffers and interrupts when the driver asks for it.
func runDevice(dev ringtest.Queue, irq chan<- struct{}, done <-chan struct{}) error {
	bufs := make([]ringtest.Buf, 0, 64)
	var scratch []byte
	for {
		c, ok, err := dev.PopAppend(bufs[:0])
		if err != nil {
			return err
		}
		if !ok {
			// QEMU's pattern: ask for kicks, then look once more before
			// sleeping (spec 2.7.10; virtio_queue_set_notification then
			// virtio_queue_empty).
			drainKicks(dev)
			dev.SetNotify(true)
			if dev.Pending() > 0 {
				continue
			}
			select {
			case <-dev.Kicked():
			case <-done:
				return nil
			case <-time.After(stallGuard):
				return fmt.Errorf("device stalled waiting for a kick (lost notification)")
			}
			dev.SetNotify(false)
			continue
		}
		scratch = scratch[:0]
		for _, b := range c.Bufs {
			if !b.Write {
				scratch = append(scratch, b.Data...)
			}
		}
		n := 0
		for _, b := range c.Bufs {
			if b.Write && n < len(scratch) {
				n += copy(b.Data, scratch[n:])
			}
		}
		for i := range n {
			scratch[i] ^= 0x5a
		}
		n = 0
		for _, b := range c.Bufs {
			if b.Write && n < len(scratch) {
				n += copy(b.Data, scratch[n:])
			}
		}
		if dev.Push(c.Head, uint32(n)) {
			select {
			case irq <- struct{}{}:
			default:
			}
		}
	}
}

// A driver and a device that sleep whenever the ring lets them must never
// both sleep: every kick and interrupt owed is delivered (spec 2.7.7, 2.7.10
// with the barriers of VIRTIO-NOTES §4.9). Small queues and one-segment
// chains maximise the number of sleep/wake races.
func TestNoLostNotificationEventIdx(t *testing.T) {
	chains := 50000
	if testing.Short() {
		chains = 5000
	}
	for _, layout := range []ring.Layout{ring.Modern, ring.PackedRing} {
		for _, ev := range []bool{false, true} {
			for _, size := range []uint16{1, 2, 3, 8} {
				if size == 3 && layout != ring.PackedRing {
					continue // only the packed ring takes other sizes than powers of two
				}
				t.Run(fmt.Sprintf("layout=%d/eventidx=%v/size=%d", layout, ev, size), func(t *testing.T) {
					soak(t, ring.Config{Size: size, Layout: layout, EventIdx: ev}, chains, 1, uint64(size))
				})
			}
		}
	}
}

// Seeded soak: random chain lengths, u16 indices wrapped several times,
// byte-exact data, every descriptor back at the end.
func TestConcurrentSoakWrapsIndices(t *testing.T) {
	chains := 3*65536 + 1234
	if testing.Short() {
		chains = 70000
	}
	cfgs := []struct {
		name string
		cfg  ring.Config
		n    int
	}{
		{"modern/eventidx/indirect", ring.Config{Size: 16, EventIdx: true, Indirect: 4}, chains},
		{"legacy", ring.Config{Size: 8, Layout: ring.Legacy}, chains / 3},
		{"modern/direct", ring.Config{Size: 32}, chains / 3},
		// N = 1: avail.ring[0] and used_event share one 32-bit word.
		{"legacy/size1/eventidx", ring.Config{Size: 1, Layout: ring.Legacy, EventIdx: true}, chains / 10},
		// Packed: both wrap counters flip every 16 (or 7) descriptors, and
		// chains straddle the wrap.
		{"packed/eventidx/indirect", ring.Config{Size: 16, Layout: ring.PackedRing, EventIdx: true, Indirect: 4}, chains},
		{"packed/size7", ring.Config{Size: 7, Layout: ring.PackedRing}, chains / 3},
		{"packed/size6/eventidx", ring.Config{Size: 6, Layout: ring.PackedRing, EventIdx: true}, chains / 3},
	}
	for i, c := range cfgs {
		t.Run(c.name, func(t *testing.T) {
			soak(t, c.cfg, c.n, 6, 42+uint64(i))
		})
	}
}

func drain(c <-chan struct{}) {
	for {
		select {
		case <-c:
		default:
			return
		}
	}
}

// drainKicks drops kicks that arrived while the device was busy (the same
// reasoning as for interrupts in soak).
func drainKicks(dev ringtest.Queue) { drain(dev.Kicked()) }
