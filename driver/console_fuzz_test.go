package driver

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/vserial/vserial/driver/virtiotest"
	"github.com/vserial/vserial/ring/ringtest"
)

// Hostile-device operations, one per 6 bytes of fuzz input:
// kind, a, b, c, d, e.
const (
	opRawPush     = iota // queue a%8, head b|c<<8, len d|e<<8 scaled, misbehaviour bits in c
	opControl            // control message: id a%40, event b%10, value c, payload of d%12 bytes
	opRaw                // raw control bytes: a%10 bytes of the input
	opHostWrite          // host writes d+1 bytes on port a%4
	opGuestSend          // guest sends d+1 bytes on port a%4 (bounded wait)
	opGuestOpen          // guest opens (b odd) / closes port a%4
	opHostConnect        // host connects (b odd) / disconnects port a%4
	opPlug               // plug (b odd) / unplug port a%4
	opNeedsReset
	opRingBad // arm ring misbehaviour c on queue a%8 for the next used buffer
	opCount
)

func (r *rig) serviceNow() {
	r.d.mu.Lock()
	r.d.serviceLocked(allVectors)
	r.d.mu.Unlock()
}

// FuzzHostileDevice lets a device write whatever it likes into used rings
// and control messages while the guest and host move data. The driver may
// reset or fail the device, but must never panic, hang, corrupt memory or
// leak it: Close always succeeds and returns every allocation. Until the
// device lies in a used ring, bytes must also arrive on their own port,
// in order and whole, or with a loss the driver reported (streamOracle).
// The driver runs with its default configuration (buffer counts included).
func FuzzHostileDevice(f *testing.F) { fuzzHostileDevice(f, false) }

// FuzzHostileDevicePacked is FuzzHostileDevice with the packed ring
// negotiated.
func FuzzHostileDevicePacked(f *testing.F) { fuzzHostileDevice(f, true) }

func fuzzHostileDevice(f *testing.F, packed bool) {
	// Seeds from the fake's normal traffic: heads the driver really posted
	// (control receive buffers 0.., port receive buffers), real messages.
	f.Add([]byte{opHostWrite, 1, 0, 0, 10, 0, opGuestSend, 1, 0, 0, 20, 0})
	f.Add([]byte{opRawPush, 2, 3, 0, 8, 0, opControl, 1, 6, 1, 0, 0})
	f.Add([]byte{opControl, 1, 7, 1, 5, 0, opControl, 2, 1, 1, 0, 0, opControl, 2, 2, 1, 0, 0})
	f.Add([]byte{opRingBad, 0, 0, 1, 0, 0, opHostWrite, 0, 0, 0, 3, 0})
	f.Add([]byte{opRingBad, 3, 0, 2, 0, 0, opGuestSend, 1, 0, 0, 3, 0, opGuestSend, 1, 0, 0, 3, 0})
	f.Add([]byte{opPlug, 3, 1, 0, 0, 0, opPlug, 3, 0, 0, 0, 0, opPlug, 3, 1, 0, 0, 0})
	f.Add([]byte{opNeedsReset, 0, 0, 0, 0, 0, opHostWrite, 1, 0, 0, 200, 0})
	f.Add([]byte{opRaw, 9, 1, 0, 0, 0, 7, 0, 1, 0, opRawPush, 0, 0, 0, 255, 255})
	f.Add([]byte{opRawPush, 1, 200, 0, 1, 0, opRawPush, 5, 0, 8, 0, 16})
	// Data on three ports in both directions, with opens, closes and host
	// (dis)connections in between: the stream oracle's ground.
	f.Add([]byte{opGuestOpen, 1, 1, 0, 0, 0, opGuestOpen, 2, 1, 0, 0, 0, opHostConnect, 2, 1, 0, 0, 0,
		opHostWrite, 1, 0, 0, 50, 0, opHostWrite, 2, 0, 0, 60, 0, opGuestSend, 1, 0, 0, 70, 0, opGuestSend, 2, 0, 0, 80, 0,
		opHostWrite, 0, 0, 0, 90, 0, opGuestOpen, 0, 1, 0, 0, 0, opGuestSend, 0, 0, 0, 255, 0,
		opHostWrite, 1, 0, 0, 100, 0, opGuestOpen, 1, 0, 0, 0, 0, opHostWrite, 1, 0, 0, 30, 0, opGuestOpen, 1, 1, 0, 0, 0,
		opHostConnect, 2, 0, 0, 0, 0, opGuestSend, 2, 0, 0, 10, 0, opHostConnect, 2, 1, 0, 0, 0, opGuestSend, 2, 0, 0, 10, 0,
		opPlug, 3, 1, 0, 0, 0, opGuestOpen, 3, 1, 0, 0, 0, opHostWrite, 3, 0, 0, 40, 0, opHostWrite, 2, 0, 0, 200, 0})
	f.Fuzz(func(t *testing.T, prog []byte) {
		if len(prog) > 6*64 {
			prog = prog[:6*64]
		}
		r := newRig(t, rigOpts{
			packed:  packed,
			console: virtiotest.ConsoleConfig{MaxPorts: 4},
			cfg:     Config{MaxResets: 3, AnnounceWait: -1, CloseFlush: -1},
			plug: plugPorts(portSpec{id: 0, name: "con", console: true},
				portSpec{id: 1, name: "one", host: true}, portSpec{id: 2, name: "two"}),
		})
		payload := bytes.Repeat([]byte("hostile"), 40)
		o := newStreamOracle(t, r)
		for len(prog) >= 6 {
			op, a, b, c, d, e := prog[0]%opCount, prog[1], prog[2], prog[3], prog[4], prog[5]
			rest := prog[6:]
			prog = rest
			id := uint32(a % 4)
			switch op {
			case opRawPush:
				m := ringtest.Misbehaviour{
					BadID: c&1 != 0, Duplicate: c&2 != 0, IdxJump: uint16(c>>4) & 3,
					DelayPublish: c&8 != 0,
				}
				n := uint32(d) | uint32(e)<<8
				if c&4 != 0 {
					n <<= 8
				}
				o.ringLie()
				r.m.RawPush(uint16(a%8), uint16(b)|uint16(c&0x80)<<1, n, m)
				r.m.RawPush(uint16(a%8), 0, 0, ringtest.Misbehaviour{}) // clear persistent switches
			case opControl:
				r.m.SendControl(uint32(a%40), uint16(b%10), uint16(c), payload[:d%12])
			case opRaw:
				n := min(int(a%10), len(rest))
				r.m.SendRaw(rest[:n])
			case opHostWrite:
				o.hostWrite(id, min(int(d)+1, len(payload)))
			case opGuestSend:
				o.guestSend(id, min(int(d)+1, len(payload)))
			case opGuestOpen:
				if p := r.d.Port(id); p != nil {
					_ = p.SetGuestOpen(r.ctx, b&1 != 0)
				}
			case opHostConnect:
				_ = r.m.HostConnect(id, b&1 != 0)
			case opPlug:
				if b&1 != 0 {
					_ = r.m.Plug(id, "p", false)
				} else {
					_ = r.m.Unplug(id)
				}
			case opNeedsReset:
				r.m.NeedsReset()
			case opRingBad:
				o.ringLie()
				r.m.MisbehaveRing(uint16(a%8), ringtest.Misbehaviour{
					BadID: c&1 != 0, Duplicate: c&2 != 0, LongLen: uint32(c&4) << 10, IdxJump: uint16(c>>4) & 7,
				}, false)
			}
			r.serviceNow()
			o.check()
		}
		r.m.FlushDelayed()
		r.serviceNow()
		o.check()
		// Whatever state the device is in, the ports answer without
		// hanging.
		for _, p := range r.d.Ports() {
			ctx, cancel := context.WithTimeout(r.ctx, time.Millisecond)
			_, err := p.Recv(ctx, io.Discard)
			cancel()
			if err != nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, ErrPortRemoved) && !errors.Is(err, ErrClosed) && !errors.Is(err, ErrDeviceReset) {
				t.Errorf("Recv: %v", err)
			}
			_ = p.Stats()
			_ = p.Name()
		}
		st := r.d.Stats()
		if st.Resets > 3 {
			t.Errorf("%d resets beyond the budget of 3", st.Resets)
		}
	})
}
