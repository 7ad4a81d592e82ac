package driver

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"
)

// streamOracle checks, for FuzzHostileDevice, that the bytes moved through
// a device arrive on the port they were written to, in order, without a
// gap, duplicate or changed byte, unless the driver or the documented
// protocol said they might not (a reset, a removed port, a discard it
// counted, QEMU dropping guest→host bytes while the host is away); and that
// no byte ever arrives on another port or in the other direction.
//
// Each byte says where it belongs: bit 7 the direction (1: host→guest),
// bits 5-6 the port id, bits 0-4 a sequence number that runs 1..31 (0 never
// occurs, so memory the device never wrote cannot pass for data).
//
// A device that lies in its used rings can hand back a buffer it never
// filled, which no driver can tell from data; the oracle stops at the
// first ring lie (the other checks of the fuzz target go on).
type streamOracle struct {
	t   *testing.T
	r   *rig
	off bool // a ring lie was told: byte checks stop

	dirs [2]streamDir // 0: guest→host, 1: host→guest

	ports     [oraclePorts]*Port // the port object last seen per id
	discarded [oraclePorts]uint64
	resets    uint64
	devDisc   uint64
	txDisc    uint64
}

const oraclePorts = 4

// streamDir is one direction of every port: next is the index of the next
// byte to write, last the sequence number last received (0: none yet, or
// a loss was reported and the stream may resume anywhere).
type streamDir struct {
	next [oraclePorts]int
	last [oraclePorts]byte
}

func oracleByte(dir, id, k int) byte { return byte(dir<<7 | id<<5 | 1 + k%31) }

func newStreamOracle(t *testing.T, r *rig) *streamOracle {
	return &streamOracle{t: t, r: r}
}

// bytes returns the next n bytes of direction dir on port id (not yet
// counted as written).
func (o *streamOracle) bytes(dir int, id uint32, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = oracleByte(dir, int(id), o.dirs[dir].next[id]+i)
	}
	return b
}

// hostWrite has the host write n bytes on port id.
func (o *streamOracle) hostWrite(id uint32, n int) {
	if o.r.m.HostWrite(id, o.bytes(1, id, n)) == nil {
		o.dirs[1].next[id] += n
	}
}

// guestSend has the guest send n bytes on port id, waiting at most a few
// milliseconds; the bytes Send took are written.
func (o *streamOracle) guestSend(id uint32, n int) {
	p := o.r.d.Port(id)
	if p == nil {
		return
	}
	ctx, cancel := context.WithTimeout(o.r.ctx, 2*time.Millisecond)
	defer cancel()
	k, err := p.Send(ctx, &sliceReader{b: o.bytes(0, id, n)})
	o.dirs[0].next[id] += k
	if err != nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, io.EOF) {
		o.lost(0, id)
	}
}

type sliceReader struct{ b []byte }

func (s *sliceReader) Read(p []byte) (int, error) {
	if len(s.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, s.b)
	s.b = s.b[n:]
	return n, nil
}

// lost says that bytes of direction dir on port id may be missing from
// here on, as the driver or the protocol reported.
func (o *streamOracle) lost(dir int, id uint32) { o.dirs[dir].last[id] = 0 }

func (o *streamOracle) lostAll(dir int) {
	for id := range uint32(oraclePorts) {
		o.lost(dir, id)
	}
}

// ringLie turns the byte checks off for the rest of the run.
func (o *streamOracle) ringLie() { o.off = true }

// receive checks bytes that arrived in direction dir on port id.
func (o *streamOracle) receive(dir int, id uint32, b []byte) {
	if o.off {
		return
	}
	s := &o.dirs[dir]
	for i, c := range b {
		if int(c>>7) != dir || uint32(c>>5&3) != id || c&31 == 0 {
			o.t.Fatalf("direction %d port %d: byte %d of %d is %#02x: it belongs to direction %d port %d (or to nobody)",
				dir, id, i, len(b), c, c>>7, c>>5&3)
		}
		seq := c & 31
		if want := s.last[id]%31 + 1; s.last[id] != 0 && seq != want {
			o.t.Fatalf("direction %d port %d: sequence %d after %d (byte %d of %d): bytes lost, repeated or reordered without a word",
				dir, id, seq, s.last[id], i, len(b))
		}
		s.last[id] = seq
	}
}

// WriteBuffers takes what RecvTo hands over for the port being drained.
type oracleSink struct {
	o  *streamOracle
	id uint32
}

func (w oracleSink) WriteBuffers(bufs [][]byte) (int, error) {
	n := 0
	for _, b := range bufs {
		w.o.receive(1, w.id, b)
		n += len(b)
	}
	return n, nil
}

// check drains what both sides received and notes every loss the driver
// or the device model reported since the last check.
func (o *streamOracle) check() {
	if st := o.r.d.Stats(); st.Resets != o.resets || st.Discarded != o.devDisc {
		o.resets, o.devDisc = st.Resets, st.Discarded
		o.lostAll(0)
		o.lostAll(1)
	}
	if st := o.r.m.Stats(); st.TxDiscarded != o.txDisc {
		// QEMU drops guest→host bytes while no host program is connected.
		o.txDisc = st.TxDiscarded
		o.lostAll(0)
	}
	for id := range uint32(oraclePorts) {
		o.receive(0, id, o.r.m.HostRead(id))
		p := o.r.d.Port(id)
		if p != o.ports[id] {
			o.ports[id] = p
			o.lost(0, id)
			o.lost(1, id)
			o.discarded[id] = 0
		}
		if p == nil {
			continue
		}
		if d := p.Stats().Discarded; d != o.discarded[id] {
			o.discarded[id] = d
			o.lost(1, id)
		}
		for range 4 {
			_, more, err := p.RecvTo(oracleSink{o, id})
			if err != nil {
				o.lost(1, id) // a reset or removal the port reported
			}
			if !more {
				break
			}
		}
	}
}
