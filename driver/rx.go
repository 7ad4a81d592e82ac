package driver

// Host → guest: used receive buffers become a port's filled FIFO, which Recv,
// Read (and RecvTo, poll_port.go) hand to the reader and re-post.

import (
	"context"
	"fmt"
	"io"

	"github.com/vserial/vserial/ring"
)

// serviceRxLocked takes host→guest buffers the device filled.
func (d *Device) serviceRxLocked(s *slot) error {
	if s.rxBufs == nil {
		// Nothing was ever posted; Pop still catches a device that
		// returns buffers it was never given.
		if _, ok, err := s.rx.Pop(); err != nil || ok {
			return portError(s, "receiveq", err)
		}
		return nil
	}
	got := false
	p := s.port
	for {
		u, ok, err := s.rx.Pop()
		if err != nil {
			return portError(s, "receiveq", err)
		}
		if !ok {
			break
		}
		d.popped++
		i := s.rxByHead[u.Head]
		if i < 0 {
			return portError(s, "receiveq", fmt.Errorf("%w: head %d has no buffer", ring.ErrDeviceProtocol, u.Head))
		}
		s.rxByHead[u.Head] = -1
		b := &s.rxBufs[i]
		b.state = rxFree
		switch {
		case u.Len == 0:
			d.postOneRxLocked(s, i)
		case p == nil || p.removed || (!p.guestOpen && !p.console):
			// Linux discards data for a port nobody has open; console
			// ports take data any time.
			if p != nil && !p.removed {
				p.stats.Discarded += uint64(u.Len)
			} else {
				d.stats.Discarded += uint64(u.Len)
			}
			d.postOneRxLocked(s, i)
		default:
			b.state, b.n, b.off = rxFilled, int(u.Len), 0
			s.fifoPush(i)
			got = true
		}
	}
	if got {
		s.rxReleased = true // the device filled buffers: kickRxLocked stamps rxMoved
	}
	d.kickRxLocked(s)
	if got {
		wake(p.rxWake)
	}
	return nil
}

// BuffersWriter is implemented by writers that can take several buffers
// with one call, in order (writev). Recv then hands over every received
// buffer ready, up to maxRecvBuffers, with a single call.
type BuffersWriter interface {
	WriteBuffers(bufs [][]byte) (int, error)
}

// Recv blocks until host→guest bytes are available, then hands them to w
// straight from the receive buffers (each slice is valid only during its
// Write call) and returns how many bytes w took. Bytes w did not take are
// dropped and counted as discarded. It returns ErrPortRemoved once the
// port is hot-unplugged and ctx.Err() when ctx ends.
func (p *Port) Recv(ctx context.Context, w io.Writer) (int, error) {
	d := p.d
	s := p.s
	d.mu.Lock()
	for {
		if err := p.errLocked(); err != nil {
			d.mu.Unlock()
			return 0, err
		}
		if s.fLen > 0 {
			break
		}
		if err := p.wait(ctx, p.rxWake); err != nil {
			d.mu.Unlock()
			return 0, err
		}
	}
	if vw, ok := w.(BuffersWriter); ok && s.fLen > 1 && s.port == p {
		return p.recvBuffers(vw)
	}
	total := 0
	var werr error
	for s.fLen > 0 && s.port == p && werr == nil && p.errLocked() == nil {
		i := s.fifoPop()
		b := &s.rxBufs[i]
		b.state = rxHeld
		d.held++
		data := b.mem.Bytes()[b.off:b.n]
		d.mu.Unlock()
		n, err := w.Write(data)
		d.mu.Lock()
		d.held--
		n = max(0, min(n, len(data)))
		total += n
		if s.port == p {
			p.stats.BytesIn += uint64(n)
			p.stats.Discarded += uint64(len(data) - n)
		} else {
			d.stats.Discarded += uint64(len(data) - n)
		}
		d.releaseRxLocked(s, i)
		werr = err
		if werr == nil && n < len(data) {
			werr = io.ErrShortWrite
		}
	}
	if s.fLen > 0 {
		wake(p.rxWake) // another reader may take the rest
	}
	d.kickRxLocked(s)
	d.finishLocked()
	d.mu.Unlock()
	return total, werr
}

// recvBuffers is Recv's body for a BuffersWriter: every filled buffer (up to
// maxRecvBuffers) goes to w in one call, and all are re-posted with one
// kick. Called with d.mu held and at least one buffer filled; unlocks.
func (p *Port) recvBuffers(w BuffersWriter) (int, error) {
	d, s := p.d, p.s
	take := p.recvIdx[:0]
	bufs := p.recvVec[:0]
	p.recvIdx, p.recvVec = nil, nil // ours until done
	want := 0
	for s.fLen > 0 && len(take) < maxRecvBuffers {
		i := s.fifoPop()
		b := &s.rxBufs[i]
		b.state = rxHeld
		data := b.mem.Bytes()[b.off:b.n]
		take = append(take, i)
		bufs = append(bufs, data)
		want += len(data)
	}
	d.held++
	d.mu.Unlock()
	n, werr := w.WriteBuffers(bufs)
	d.mu.Lock()
	d.held--
	n = max(0, min(n, want))
	clear(bufs)
	if s.port == p {
		p.stats.BytesIn += uint64(n)
		p.stats.Discarded += uint64(want - n)
	} else {
		d.stats.Discarded += uint64(want - n)
	}
	for _, i := range take {
		d.releaseRxLocked(s, i)
	}
	p.recvIdx, p.recvVec = take, bufs
	if werr == nil && n < want {
		werr = io.ErrShortWrite
	}
	if s.fLen > 0 {
		wake(p.rxWake)
	}
	d.kickRxLocked(s)
	d.finishLocked()
	d.mu.Unlock()
	return n, werr
}

// Read copies host→guest bytes into b, blocking until some are available.
// Unlike Recv it keeps bytes that do not fit for the next call.
func (p *Port) Read(ctx context.Context, b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	d := p.d
	s := p.s
	d.mu.Lock()
	defer d.mu.Unlock()
	for {
		if err := p.errLocked(); err != nil {
			return 0, err
		}
		if s.fLen > 0 {
			break
		}
		if err := p.wait(ctx, p.rxWake); err != nil {
			return 0, err
		}
	}
	total := 0
	for s.fLen > 0 && total < len(b) {
		i := s.fifo[s.fHead]
		rb := &s.rxBufs[i]
		n := copy(b[total:], rb.mem.Bytes()[rb.off:rb.n])
		rb.off += n
		total += n
		p.stats.BytesIn += uint64(n)
		if rb.off == rb.n {
			s.fifoPop()
			d.releaseRxLocked(s, i)
		}
	}
	if s.fLen > 0 {
		wake(p.rxWake)
	}
	d.kickRxLocked(s)
	return total, nil
}

// discardRxLocked drops every filled buffer (counted) and re-posts it.
func (p *Port) discardRxLocked() {
	s := p.s
	for s.fLen > 0 {
		i := s.fifoPop()
		b := &s.rxBufs[i]
		p.stats.Discarded += uint64(b.n - b.off)
		p.d.releaseRxLocked(s, i)
	}
	p.d.kickRxLocked(s)
}

func (s *slot) fifoPush(i int32) {
	s.fifo[(s.fHead+s.fLen)%len(s.fifo)] = i
	s.fLen++
}

func (s *slot) fifoPop() int32 {
	i := s.fifo[s.fHead]
	s.fHead = (s.fHead + 1) % len(s.fifo)
	s.fLen--
	return i
}
