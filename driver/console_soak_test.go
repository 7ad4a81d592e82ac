package driver

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/vserial/vserial/driver/virtiotest"
	"github.com/vserial/vserial/ring/ringtest"
)

// variants are the transports and interrupt modes the driver must handle
// identically.
var variants = []struct {
	name string
	fn   virtiotest.Options
	con  virtiotest.ConsoleConfig
}{
	{"modern intx", virtiotest.Options{}, virtiotest.ConsoleConfig{}},
	{"modern msix", virtiotest.Options{MSIXVectors: 2}, virtiotest.ConsoleConfig{}},
	{"modern msix1", virtiotest.Options{MSIXVectors: 1}, virtiotest.ConsoleConfig{}},
	{"modern msix per port", virtiotest.Options{MSIXVectors: 4}, virtiotest.ConsoleConfig{}},
	{"modern iommu", virtiotest.Options{IOMMUPlatform: true, MSIXVectors: 2}, virtiotest.ConsoleConfig{}},
	{"modern no event-idx", virtiotest.Options{}, virtiotest.ConsoleConfig{NoEventIdx: true}},
	{"transitional", virtiotest.Options{Transitional: true}, virtiotest.ConsoleConfig{}},
	{"legacy", virtiotest.Options{LegacyOnly: true}, virtiotest.ConsoleConfig{}},
	{"legacy msix", virtiotest.Options{LegacyOnly: true, MSIXVectors: 2}, virtiotest.ConsoleConfig{}},
	{"legacy msix per port", virtiotest.Options{LegacyOnly: true, MSIXVectors: 4}, virtiotest.ConsoleConfig{}},
	{"legacy no event-idx", virtiotest.Options{LegacyOnly: true}, virtiotest.ConsoleConfig{NoEventIdx: true}},
}

func TestTransportsAndInterruptModes(t *testing.T) {
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			r := newRig(t, rigOpts{console: v.con, fn: v.fn, plug: plugPorts(
				portSpec{id: 0, name: "con", console: true}, portSpec{id: 1, name: "p", host: true})})
			if v.fn.IOMMUPlatform && r.d.Features()&FeatureAccessPlatform == 0 {
				t.Error("ACCESS_PLATFORM not accepted behind an IOMMU")
			}
			if got := r.d.Features()&FeatureEventIdx != 0; got == v.con.NoEventIdx {
				t.Errorf("EVENT_IDX negotiated = %v", got)
			}
			p := r.port(1, "p")
			if err := p.SetGuestOpen(r.ctx, true); err != nil {
				t.Fatal(err)
			}
			pingPong(t, r, p, 200)
		})
	}
}

// pingPong runs n round trips of growing size; a lost notification in
// either direction hangs one of them (caught by the rig's timeout).
func pingPong(t *testing.T, r *rig, p *Port, n int) {
	t.Helper()
	var buf bytes.Buffer
	for i := 0; i < n; i++ {
		msg := bytes.Repeat([]byte{byte(i)}, 1+i*37%9000)
		if err := r.m.HostWrite(p.ID(), msg); err != nil {
			t.Fatal(err)
		}
		buf.Reset()
		for buf.Len() < len(msg) {
			if _, err := p.Recv(r.ctx, &buf); err != nil {
				t.Fatalf("round %d: Recv: %v\n%s", i, err, r.log)
			}
		}
		if !bytes.Equal(buf.Bytes(), msg) {
			t.Fatalf("round %d: host→guest bytes differ", i)
		}
		if _, err := p.Write(r.ctx, msg); err != nil {
			t.Fatalf("round %d: Write: %v", i, err)
		}
		got, err := r.m.HostReadFull(r.ctx, p.ID(), len(msg))
		if err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("round %d: host read %d bytes, %v", i, len(got), err)
		}
	}
}

func TestNoLostNotificationWhenDevicePublishesLate(t *testing.T) {
	for _, noEventIdx := range []bool{false, true} {
		t.Run(fmt.Sprintf("event-idx=%v", !noEventIdx), func(t *testing.T) {
			r := newRig(t, rigOpts{console: virtiotest.ConsoleConfig{NoEventIdx: noEventIdx},
				plug: plugPorts(portSpec{id: 1, name: "p", host: true})})
			p := r.port(1, "p")
			if err := p.SetGuestOpen(r.ctx, true); err != nil {
				t.Fatal(err)
			}
			// The device writes used entries but holds the index; the
			// driver must pick them up on the interrupt that follows the
			// late publication.
			r.m.MisbehaveRing(virtiotest.RxQueue(1), ringtest.Misbehaviour{DelayPublish: true}, false)
			if err := r.m.HostWrite(1, []byte("late")); err != nil {
				t.Fatal(err)
			}
			got := make(chan []byte, 1)
			go func() {
				var b bytes.Buffer
				for b.Len() < 4 {
					if _, err := p.Recv(r.ctx, &b); err != nil {
						break
					}
				}
				got <- b.Bytes()
			}()
			r.m.MisbehaveRing(virtiotest.RxQueue(1), ringtest.Misbehaviour{}, false)
			r.m.FlushDelayed()
			if b := <-got; string(b) != "late" {
				t.Fatalf("got %q", b)
			}
			pingPong(t, r, p, 50)
		})
	}
}

func TestSpuriousInterruptsHarmless(t *testing.T) {
	r := newRig(t, rigOpts{plug: plugPorts(portSpec{id: 1, name: "p", host: true})})
	p := r.port(1, "p")
	if err := p.SetGuestOpen(r.ctx, true); err != nil {
		t.Fatal(err)
	}
	for q := uint16(0); q < 8; q++ {
		r.m.Interrupt(q)
	}
	pingPong(t, r, p, 5)
	if st := r.d.Stats(); st.Violations != 0 || st.Resets != 0 {
		t.Errorf("stats %+v", st)
	}
}

// TestSoakManyPortsBothDirections moves seeded random-sized traffic through
// many ports in both directions at once, with the host throttling and
// un-throttling, and checks every byte and that every descriptor comes
// back.
func TestSoakManyPortsBothDirections(t *testing.T) {
	t.Run("modern", func(t *testing.T) { soak(t, virtiotest.Options{}, 16, 2<<20) })
	t.Run("legacy msix", func(t *testing.T) { soak(t, virtiotest.Options{LegacyOnly: true, MSIXVectors: 2}, 4, 512<<10) })
}

func soak(t *testing.T, opts virtiotest.Options, nports uint32, perPort int) {
	const seed = 20261125
	var specs []portSpec
	for id := uint32(1); id <= nports; id++ {
		specs = append(specs, portSpec{id: id, name: fmt.Sprintf("soak%d", id), host: true})
	}
	r := newRig(t, rigOpts{fn: opts, cfg: Config{TxBuffers: 8, RxBuffers: 16}, plug: plugPorts(specs...)})
	pattern := func(id uint32, i int) byte { return byte((i*131 + int(id)*17 + i>>9) % 251) }
	var wg sync.WaitGroup
	errs := make(chan error, 4*nports)
	for _, s := range specs {
		p := r.port(s.id, s.name)
		r.until("host connected", p.HostConnected)
		if err := p.SetGuestOpen(r.ctx, true); err != nil {
			t.Fatal(err)
		}
		id := s.id
		rng := rand.New(rand.NewPCG(seed, uint64(id)))
		hostSizes := make([]int, 0)
		for n := 0; n < perPort; {
			k := min(1+rng.IntN(10000), perPort-n)
			hostSizes = append(hostSizes, k)
			n += k
		}
		guestSizes := make([]int, 0)
		for n := 0; n < perPort; {
			k := min(1+rng.IntN(6000), perPort-n)
			guestSizes = append(guestSizes, k)
			n += k
		}
		throttle := rng.IntN(2) == 0
		wg.Add(4)
		go func() { // host → device
			defer wg.Done()
			off := 0
			for _, k := range hostSizes {
				b := make([]byte, k)
				for i := range b {
					b[i] = pattern(id, off+i)
				}
				off += k
				if err := r.m.HostWrite(id, b); err != nil {
					errs <- err
					return
				}
			}
		}()
		go func() { // guest reader
			defer wg.Done()
			got := 0
			w := writerFunc(func(b []byte) (int, error) {
				for i, c := range b {
					if c != pattern(id, got+i) {
						return i, fmt.Errorf("port %d: host→guest byte %d is %#x, want %#x", id, got+i, c, pattern(id, got+i))
					}
				}
				got += len(b)
				return len(b), nil
			})
			for got < perPort {
				if _, err := p.Recv(r.ctx, w); err != nil {
					errs <- err
					return
				}
			}
		}()
		go func() { // guest writer
			defer wg.Done()
			off := 0
			for _, k := range guestSizes {
				src := &patternReader{id: id, off: off, end: off + k, pat: pattern}
				for src.off < src.end {
					if _, err := p.Send(r.ctx, src); err != nil && err != io.EOF {
						errs <- err
						return
					}
				}
				off += k
			}
			if err := p.Flush(r.ctx); err != nil {
				errs <- err
			}
		}()
		go func() { // host reader, throttling now and then
			defer wg.Done()
			got := 0
			for got < perPort {
				if throttle && got%3 == 0 {
					_ = r.m.SetThrottled(id, true)
					_ = r.m.SetThrottled(id, false)
				}
				n := min(perPort-got, 1+got%7000)
				b, err := r.m.HostReadFull(r.ctx, id, n)
				if err != nil {
					errs <- fmt.Errorf("port %d: host read after %d bytes: %w", id, got, err)
					return
				}
				for i, c := range b {
					if c != pattern(id, got+i) {
						errs <- fmt.Errorf("port %d: guest→host byte %d is %#x, want %#x", id, got+i, c, pattern(id, got+i))
						return
					}
				}
				got += n
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// Every descriptor is back: transmit queues empty, every receive
	// buffer posted again.
	r.d.mu.Lock()
	for _, s := range r.d.slots[1 : nports+1] {
		if n := s.tx.InFlight(); n != 0 {
			t.Errorf("port %d: %d transmit chains still in flight", s.id, n)
		}
		if s.rx.InFlight() != len(s.rxBufs) {
			t.Errorf("port %d: %d of %d receive buffers posted", s.id, s.rx.InFlight(), len(s.rxBufs))
		}
		if p := s.port; p.stats.BytesIn != uint64(perPort) || p.stats.BytesOut != uint64(perPort) || p.stats.Discarded != 0 {
			t.Errorf("port %d: stats %+v", s.id, p.stats)
		}
	}
	st := r.d.stats
	r.d.mu.Unlock()
	if st.Violations != 0 || st.Resets != 0 {
		t.Errorf("device stats %+v", st)
	}
}

// patternReader yields pattern bytes [off, end) in reads of any size.
type patternReader struct {
	id       uint32
	off, end int
	pat      func(uint32, int) byte
}

func (r *patternReader) Read(b []byte) (int, error) {
	if r.off >= r.end {
		return 0, io.EOF
	}
	n := min(len(b), r.end-r.off, 1+r.off%5000)
	for i := range n {
		b[i] = r.pat(r.id, r.off+i)
	}
	r.off += n
	return n, nil
}

// TestChaosTrafficWithResetsAndHotPlug keeps traffic flowing on several
// ports while the device resets, breaks ring rules, unplugs and re-plugs
// ports and the host connects and disconnects. Bytes may be lost; the
// driver must not panic, deadlock, race or leak, and must work normally
// once the chaos stops.
func TestChaosTrafficWithResetsAndHotPlug(t *testing.T) {
	const nports = 4
	var specs []portSpec
	for id := uint32(1); id <= nports; id++ {
		specs = append(specs, portSpec{id: id, name: fmt.Sprintf("c%d", id), host: true})
	}
	r := newRig(t, rigOpts{cfg: Config{MaxResets: 1 << 20, TxBuffers: 4, RxBuffers: 8}, plug: plugPorts(specs...)})
	for _, s := range specs {
		r.port(s.id, s.name)
	}
	ctx, stop := context.WithCancel(r.ctx)
	var wg sync.WaitGroup
	payload := bytes.Repeat([]byte("chaos!"), 2000)
	for _, s := range specs {
		id := s.id
		wg.Add(3)
		go func() { // guest reader: follows the port across re-plugs
			defer wg.Done()
			for ctx.Err() == nil {
				p := r.d.Port(id)
				if p == nil {
					time.Sleep(time.Millisecond)
					continue
				}
				_ = p.SetGuestOpen(ctx, true)
				_, _ = p.Recv(ctx, io.Discard)
			}
		}()
		go func() { // guest writer
			defer wg.Done()
			for ctx.Err() == nil {
				p := r.d.Port(id)
				if p == nil {
					time.Sleep(time.Millisecond)
					continue
				}
				wctx, cancel := context.WithTimeout(ctx, 5*time.Millisecond)
				_, _ = p.Send(wctx, bytes.NewReader(payload[:1+int(id)*997%len(payload)]))
				cancel()
			}
		}()
		go func() { // host side
			defer wg.Done()
			buf := make([]byte, 64<<10)
			for ctx.Err() == nil {
				_ = r.m.HostWrite(id, payload[:int(id)*1231%len(payload)+1])
				r.m.HostReadInto(id, buf)
				time.Sleep(100 * time.Microsecond)
			}
		}()
	}
	rng := rand.New(rand.NewPCG(7, 11))
	for i := 0; i < 300; i++ {
		id := uint32(1 + rng.IntN(nports))
		switch rng.IntN(6) {
		case 0:
			r.m.NeedsReset()
		case 1:
			r.m.MisbehaveRing(virtiotest.RxQueue(id), ringtest.Misbehaviour{BadID: true}, false)
		case 2:
			r.m.MisbehaveRing(virtiotest.TxQueue(id), ringtest.Misbehaviour{IdxJump: 2}, false)
		case 3:
			if r.m.Unplug(id) == nil {
				time.Sleep(time.Millisecond)
				_ = r.m.Plug(id, fmt.Sprintf("c%d", id), false)
				_ = r.m.HostConnect(id, true)
			}
		case 4:
			_ = r.m.HostConnect(id, false)
			_ = r.m.HostConnect(id, true)
		case 5:
			_ = r.m.SetThrottled(id, rng.IntN(2) == 0)
		}
		time.Sleep(time.Duration(rng.IntN(2000)) * time.Microsecond)
	}
	for id := uint32(1); id <= nports; id++ {
		r.m.MisbehaveRing(virtiotest.RxQueue(id), ringtest.Misbehaviour{}, false)
		r.m.MisbehaveRing(virtiotest.TxQueue(id), ringtest.Misbehaviour{}, false)
		_ = r.m.SetThrottled(id, false)
	}
	stop()
	wg.Wait()
	if err := r.d.Err(); err != nil {
		t.Fatalf("device failed: %v", err)
	}
	t.Logf("after chaos: %+v", r.d.Stats())
	// Back to normal: a clean reset, then every port works.
	resets := r.d.Stats().Resets
	r.m.NeedsReset()
	r.until("reset", func() bool { return r.d.Stats().Resets > resets })
	for id := uint32(1); id <= nports; id++ {
		var p *Port
		r.until(fmt.Sprintf("port %d settled", id), func() bool {
			p = r.d.Port(id)
			return p != nil && p.settled() && p.HostConnected()
		})
		_ = r.m.HostRead(id)
		if err := p.SetGuestOpen(r.ctx, true); err != nil {
			t.Fatal(err)
		}
		r.modelWait("guest open", func() bool { return r.m.GuestConnected(id) })
		for drained := false; !drained; { // leftovers from the chaos
			c, cancel := context.WithTimeout(r.ctx, 20*time.Millisecond)
			_, err := p.Recv(c, io.Discard)
			cancel()
			drained = err != nil
		}
		pingPong(t, r, p, 3)
	}
}
