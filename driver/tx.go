package driver

// Guest → host: transmit buffers are filled by Send, Write (and SendFrom,
// poll_port.go), queued with one publish and kick per batch, and reclaimed when
// the device has used them; Flush waits for that.

import (
	"context"
	"fmt"
	"io"

	"github.com/vserial/vserial/ring"
)

// reapTxLocked reclaims transmit buffers the device has taken. A device
// violation starts recovery.
func (d *Device) reapTxLocked(s *slot) {
	if err := d.reapTxErrLocked(s); err != nil {
		d.faultLocked(err)
	}
}

func (d *Device) reapTxErrLocked(s *slot) error {
	if d.broken() {
		return nil
	}
	if s.txBufs == nil {
		if _, ok, err := s.tx.Pop(); err != nil || ok {
			return portError(s, "transmitq", err)
		}
		return nil
	}
	freed := false
	for {
		u, ok, err := s.tx.Pop()
		if err != nil {
			return portError(s, "transmitq", err)
		}
		if !ok {
			break
		}
		d.popped++
		i := s.txByHead[u.Head]
		if i == injectedMark {
			s.txByHead[u.Head] = -1
			d.acceptedInjectedLocked(s)
			continue
		}
		if i < 0 {
			return portError(s, "transmitq", fmt.Errorf("%w: head %d has no buffer", ring.ErrDeviceProtocol, u.Head))
		}
		s.txByHead[u.Head] = -1
		b := &s.txBufs[i]
		// The device reports used length 0 on transmit queues (spec
		// 5.3.6.3: ignore it); the whole buffer was taken.
		if p := s.port; p != nil && b.gen == s.gen {
			p.txInflight--
			p.stats.BytesOut += uint64(b.n)
		}
		s.txFree = append(s.txFree, i)
		freed = true
	}
	if freed && s.port != nil {
		wake(s.port.txWake)
		wake(s.port.flushWake)
	}
	return nil
}

// waitTx waits, like wait, for the device to return transmit buffers: it
// asks for a transmit interrupt first, and returns at once if buffers came
// back meanwhile (the caller reaps and looks again).
func (p *Port) waitTx(ctx context.Context, c chan struct{}) error {
	s := p.s
	if p.d.broken() || p.removed {
		return p.wait(ctx, c)
	}
	s.txWaiters++
	var err error
	if !s.tx.EnableInterrupts() {
		err = p.wait(ctx, c)
	}
	s.txWaiters--
	if s.txWaiters == 0 && s.injectedOut == 0 && !p.d.broken() {
		s.tx.DisableInterrupts()
	}
	return err
}

// canSendLocked reports whether bytes queued now would reach the host.
// QEMU discards guest→host bytes of a virtserialport whose host side is
// not connected (VIRTIO-NOTES §7.8), so the port waits, as Linux's write()
// does; console ports are never held back.
func (p *Port) canSendLocked() bool {
	if p.reannounce {
		return false
	}
	return p.hostConnected || p.console || !p.d.multiport
}

// takeTxLocked waits for a free transmit buffer the port may fill.
func (p *Port) takeTxLocked(ctx context.Context) (int32, error) {
	d, s := p.d, p.s
	if err := d.ensureTxLocked(s); err != nil {
		return -1, err
	}
	for {
		if err := p.errLocked(); err != nil {
			return -1, err
		}
		d.reapTxLocked(s)
		if err := p.errLocked(); err != nil {
			return -1, err
		}
		if p.canSendLocked() && len(s.txFree) > 0 {
			break
		}
		if err := p.waitTx(ctx, p.txWake); err != nil {
			return -1, err
		}
	}
	i := s.txFree[len(s.txFree)-1]
	s.txFree = s.txFree[:len(s.txFree)-1]
	s.txBufs[i].owned = true
	if len(s.txFree) > 0 {
		wake(p.txWake)
	}
	return i, nil
}

// queueTxLocked hands a filled transmit buffer to the device and kicks it
// if needed. It reports false (and frees the buffer, the bytes lost) if the
// port went away or is waiting to be re-announced after a reset. A reset
// that is over by now does not matter: the buffer was never given to the
// device.
func (p *Port) queueTxLocked(i int32, n int) bool {
	ok := p.addTxLocked(i, n)
	p.kickTxLocked()
	return ok
}

// addTxLocked is queueTxLocked without the publish and kick.
func (p *Port) addTxLocked(i int32, n int) bool {
	d, s := p.d, p.s
	b := &s.txBufs[i]
	b.owned = false
	if n <= 0 || s.port != p || p.reannounce || p.errLocked() != nil || d.broken() {
		s.txFree = append(s.txFree, i)
		if n > 0 {
			p.txLost = true
		}
		wake(p.txWake)
		return n <= 0
	}
	d.seg[0] = ring.Segment{Addr: b.mem.Addr(), Len: uint32(n)}
	head, err := s.tx.Add(d.seg[:])
	if err != nil {
		// Cannot happen with one descriptor per buffer and no more
		// buffers than descriptors; treat like a broken queue.
		s.txFree = append(s.txFree, i)
		d.violationLocked(fmt.Errorf("port %d: add tx: %w", s.id, err), p)
		return false
	}
	s.txByHead[head] = i
	b.gen, b.n = s.gen, n
	p.txInflight++
	return true
}

// kickTxLocked publishes the transmit buffers added and notifies the device
// if it asked to be.
func (p *Port) kickTxLocked() {
	d, s := p.d, p.s
	if d.broken() || s.txBufs == nil {
		return
	}
	if s.tx.Publish() {
		d.notifyLocked(s.txq)
	}
}

// BuffersReader is implemented by readers that can fill several buffers
// with one call, in order (readv). Send then fills every free transmit
// buffer, up to maxSendBuffers, with a single call instead of one.
type BuffersReader interface {
	ReadBuffers(bufs [][]byte) (int, error)
}

// Bounds on the buffers one Send or Recv call hands to a vectored reader or
// writer (Linux's UIO_MAXIOV is 1024).
const (
	maxSendBuffers = 32
	maxRecvBuffers = 128
)

// Send makes one Read call on r straight into a free transmit buffer
// (waiting while none is free, or while the host side is disconnected) and
// queues what it read for the device; if r is a BuffersReader and the
// previous Send filled what it was given (a stream, not a trickle), that
// one call may fill every free transmit buffer. It returns the bytes read and r's
// error (io.EOF included). Flush waits for the bytes to reach the device.
func (p *Port) Send(ctx context.Context, r io.Reader) (int, error) {
	d := p.d
	s := p.s
	d.mu.Lock()
	if p.txLost {
		// Bytes an earlier Send queued were lost in a device reset: the
		// stream is broken, and the caller must hear it before it hands
		// over more (Flush would say so too, but a stream may never flush).
		p.txLost = false
		d.mu.Unlock()
		return 0, ErrDeviceReset
	}
	i, err := p.takeTxLocked(ctx)
	if err != nil {
		d.mu.Unlock()
		return 0, err
	}
	vr, vec := r.(BuffersReader)
	if !vec || !p.sendWide || len(s.txFree) == 0 {
		// One buffer: the reader has a vectored read, but the last Send
		// did not fill what it was given (a trickle, not a stream).
		buf := s.txBufs[i].mem.Bytes()
		d.held++
		d.mu.Unlock()
		n, rerr := r.Read(buf)
		d.mu.Lock()
		d.held--
		n = max(0, min(n, len(buf)))
		p.sendWide = n == len(buf)
		p.queueTxLocked(i, n)
		d.finishLocked()
		rerr = p.lostLocked(rerr)
		d.mu.Unlock()
		return n, rerr
	}
	// Take every free buffer, without waiting, for one vectored read.
	take := append(p.sendIdx[:0], i)
	p.sendIdx = nil // ours until we are done: a second Send allocates its own
	for len(take) < maxSendBuffers && len(s.txFree) > 0 {
		j := s.txFree[len(s.txFree)-1]
		s.txFree = s.txFree[:len(s.txFree)-1]
		s.txBufs[j].owned = true
		take = append(take, j)
	}
	bufs := p.sendVec[:0]
	p.sendVec = nil
	total := 0
	for _, j := range take {
		b := s.txBufs[j].mem.Bytes()
		bufs = append(bufs, b)
		total += len(b)
	}
	d.held++
	d.mu.Unlock()
	n, rerr := vr.ReadBuffers(bufs)
	d.mu.Lock()
	d.held--
	n = max(0, min(n, total))
	p.sendWide = n == total
	clear(bufs) // no references to device memory outside the lock
	p.addFilledLocked(take, n)
	p.sendIdx, p.sendVec = take, bufs
	p.kickTxLocked()
	d.finishLocked()
	rerr = p.lostLocked(rerr)
	d.mu.Unlock()
	return n, rerr
}

// addFilledLocked queues the transmit buffers take, which a vectored read
// filled in order with n bytes; those it did not reach go back to the free
// list.
func (p *Port) addFilledLocked(take []int32, n int) {
	left := n
	for _, j := range take {
		k := min(left, p.s.txBufs[j].mem.Len())
		left -= k
		p.addTxLocked(j, k)
	}
}

// lostLocked turns a Send's result into ErrDeviceReset when the bytes it
// read could not be queued because the device was being reset.
func (p *Port) lostLocked(err error) error {
	if p.txLost && p.errLocked() == nil {
		p.txLost = false
		return ErrDeviceReset
	}
	return err
}

// Write queues all of b and returns once the device has taken every byte
// (or ctx ends, or the port goes away).
func (p *Port) Write(ctx context.Context, b []byte) (int, error) {
	d := p.d
	d.mu.Lock()
	resets := d.stats.Resets
	done := 0
	for done < len(b) {
		i, err := p.takeTxLocked(ctx)
		if err != nil {
			d.mu.Unlock()
			return done, err
		}
		n := copy(p.s.txBufs[i].mem.Bytes(), b[done:])
		if !p.queueTxLocked(i, n) {
			err := p.errLocked()
			if err == nil {
				err = ErrDeviceReset
			}
			d.mu.Unlock()
			return done, err
		}
		done += n
	}
	err := p.flushLocked(ctx, resets)
	d.mu.Unlock()
	return done, err
}

// Flush waits until the device has taken every byte queued by Send.
func (p *Port) Flush(ctx context.Context) error {
	p.d.mu.Lock()
	defer p.d.mu.Unlock()
	return p.flushLocked(ctx, 0)
}

// flushLocked waits for every queued byte. Bytes lost in a device reset
// are reported (once) if the reset came after resets, the device's reset
// count when the caller queued its bytes (Write reports only its own).
func (p *Port) flushLocked(ctx context.Context, resets uint64) error {
	d := p.d
	for {
		if d.txReady(p.s) {
			d.reapTxLocked(p.s)
		}
		if p.txLost && d.stats.Resets > resets {
			p.txLost = false
			return ErrDeviceReset
		}
		if err := p.errLocked(); err != nil {
			return err
		}
		if p.txInflight == 0 {
			wake(p.flushWake) // pass on to another flusher
			return nil
		}
		if err := p.waitTx(ctx, p.flushWake); err != nil {
			return err
		}
	}
}
