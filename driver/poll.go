package driver

// The poll face of a device, for a data-plane loop that owns the interrupt
// descriptors in its own epoll set (package pump) instead of the driver's
// own event loop (Config.ExternalLoop). Every method takes the device lock
// for a short, bounded time and never blocks: the loop does its socket
// reads and writes inside RecvTo and SendFrom, under the lock, with
// non-blocking calls, so no buffer is ever in use outside the lock and
// nothing has to be handed between goroutines.
//
// The loop's cycle (NAPI, virtqueue_disable_cb / enable_cb_prepare /
// virtqueue_poll in Linux):
//
//	wake:   Disarm, then HandleIRQ for the interrupt descriptors that fired
//	pass:   Poll, then RecvTo / SendFrom / TxDrained for each client,
//	        again while a pass makes progress (or a spin on RxPending hits)
//	sleep:  Arm; if it reports pending, pass again; otherwise wait

import (
	"errors"
	"fmt"
)

// PollIRQ is an IRQ whose wake-ups a loop can wait for in its own epoll
// set.
type PollIRQ interface {
	IRQ
	// PollFDs returns descriptors that become readable (EPOLLIN, meant to
	// be watched edge-triggered and never read) each time the interrupt
	// fires: one per MSI-X vector in vector order, or one for INTx or for
	// a source that cannot tell vectors apart. After PollFDs, Wait is no
	// longer used. The descriptors stay the IRQ's: they are closed with it.
	PollFDs() ([]int, error)
}

// SendBlock says why SendFrom could not read (more) client bytes now.
type SendBlock uint8

const (
	// SendOK: nothing in the way.
	SendOK SendBlock = iota
	// SendGated: the host side of the port is not connected (or the port
	// waits to be announced again after a reset); bytes stay with the
	// client.
	SendGated
	// SendFull: every transmit buffer is with the device. Transmit
	// interrupts are wanted until one comes back.
	SendFull
)

// ErrNoPollIRQ is returned by IRQFDs when the interrupt source cannot be
// waited for in an epoll set.
var ErrNoPollIRQ = errors.New("driver: the interrupt source has no pollable descriptors")

// IRQFDs returns the interrupt's descriptors for a loop that waits for them
// itself (Config.ExternalLoop). Bit i of HandleIRQ's argument stands for
// fds[i].
func (d *Device) IRQFDs() ([]int, error) {
	pi, ok := d.fn.IRQ().(PollIRQ)
	if !ok {
		return nil, fmt.Errorf("%w (%T)", ErrNoPollIRQ, d.fn.IRQ())
	}
	fds, err := pi.PollFDs()
	if err != nil {
		return nil, fmt.Errorf("driver: interrupt descriptors: %w", err)
	}
	if len(fds) == 0 || len(fds) > 64 {
		return nil, fmt.Errorf("driver: the interrupt source gave %d descriptors", len(fds))
	}
	d.mu.Lock()
	d.irqFDs = len(fds)
	if d.nvec == 0 {
		// An interrupt taken before the loop watched (during bring-up)
		// left INTx masked, and the new descriptor will not report it:
		// the loop's first Arm unmasks.
		d.unmaskDue = true
	}
	d.mu.Unlock()
	return fds, nil
}

// SetWaker makes the driver call fn (under its lock; fn must not block or
// call back into the device) whenever a port or the device changes: a port
// added, removed or renamed, the host connecting or leaving, a reset, the
// device stopping. A loop uses it to wake up for changes that do not come
// with an interrupt of its own. nil removes it.
func (d *Device) SetWaker(fn func()) {
	d.mu.Lock()
	d.waker = fn
	d.mu.Unlock()
}

// HandleIRQ services the device after its interrupt fired: fired has bit i
// set for each descriptor IRQFDs returned that became readable. With INTx it
// reads the ISR (lowering the line) and leaves the line masked until Arm, so
// a burst of work costs one interrupt. It reports whether the interrupt
// found anything to do (a used buffer on any queue, a configuration
// change): a loop counts those that did not to tell a storm.
func (d *Device) HandleIRQ(fired uint64) (handled bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.broken() {
		return true
	}
	before := d.popped
	d.stats.Interrupts++
	vectors := allVectors
	if d.nvec > 1 && d.irqFDs == d.nvec {
		vectors = fired
	}
	config := vectors&vectorBit(d.vecConfig) != 0
	if d.nvec == 0 {
		isr, err := d.t.ISR()
		if err != nil {
			d.log.Warn("virtio-console: read ISR", "err", err)
		}
		config = isr&isrConfig != 0
		d.unmaskDue = true
	}
	if config {
		d.checkStatusLocked()
		if d.sizeF && !d.multiport && !d.broken() {
			d.configSizeLocked()
		}
	}
	if d.serviceLocked(vectors) {
		d.pendingWork = true
	}
	// A configuration change counts as work only when the ISR says so
	// (INTx); an MSI-X configuration vector that fires for nothing is as
	// spurious as a queue vector.
	return d.popped != before || d.broken() || (d.nvec == 0 && config)
}

// Fail stops the device for good because its interrupt can no longer be
// waited for (the function was taken away: /dev/uioN reports an error).
// Every port is removed and Done closes with err, as when the driver's own
// event loop loses its interrupt.
func (d *Device) Fail(err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.fatalLocked(fmt.Errorf("driver: wait for interrupt: %w", err))
}

// ReportViolation counts and reports a device violation seen by the loop
// (an interrupt storm), rate-limited like the driver's own.
func (d *Device) ReportViolation(err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.violationLocked(err, nil)
}

// Poll services what needs no interrupt: used buffers on every data queue
// (received bytes wait for RecvTo or Recv, transmit buffers are reclaimed)
// and control work left from an earlier round. It reports whether control
// work is still left.
func (d *Device) Poll() (more bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.broken() {
		return false
	}
	if err := d.pollDataLocked(); err != nil {
		d.faultLocked(err)
		return false
	}
	if d.pendingWork && d.multiport {
		d.pendingWork = false
		m, err := d.serviceControlPassesLocked(maxControlPasses)
		if err != nil {
			d.faultLocked(err)
			return false
		}
		d.pendingWork = m
	}
	return d.pendingWork
}

// Disarm asks the device not to interrupt for data buffers while the loop
// polls. Transmit interrupts a blocked Send or Flush asked for stay on.
func (d *Device) Disarm() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.broken() {
		return
	}
	for _, s := range d.slots {
		if s == nil {
			continue
		}
		if s.hotLocked() {
			s.rx.DisableInterrupts()
			s.rxOff = true
		}
		if s.txOn && s.txWaiters == 0 && s.injectedOut == 0 {
			s.tx.DisableInterrupts()
			s.txOn = false
		}
	}
}

// hotLocked reports whether the slot's port can get data from the device:
// one a guest program has open, or a console. The loop polls only those;
// the others keep their receive interrupt on (a device that sends to a
// closed port, which QEMU does not, still wakes the loop and is serviced).
// Touching fewer rings per pass matters: after every process switch TCG
// has to refill its TLB for each page touched.
func (s *slot) hotLocked() bool {
	p := s.port
	return p != nil && !p.removed && (p.guestOpen || p.console)
}

// pollDataLocked services the queues a pass can find work on: the receive
// queues of hot slots and the transmit queues with buffers out.
func (d *Device) pollDataLocked() error {
	for _, s := range d.slots {
		if s == nil {
			continue
		}
		if s.hotLocked() {
			if err := d.serviceRxLocked(s); err != nil {
				return err
			}
		}
		if s.tx.InFlight() > 0 {
			if err := d.reapTxErrLocked(s); err != nil {
				return err
			}
		}
	}
	return nil
}

// Arm prepares the loop's sleep: it asks for an interrupt at the next used
// buffer of every receive queue Disarm turned off and of the transmit queues whose port waits
// for buffers (SendFull, TxDrained not yet done, a blocked Send or Flush),
// then unmasks INTx if an interrupt was taken since the last Arm. It reports
// true when buffers arrived meanwhile or control work is left: the loop
// must pass again instead of sleeping (no wake-up is lost between the last
// pass and the sleep). With unmask false INTx stays masked (a loop that
// backs off from an interrupt storm polls instead).
func (d *Device) Arm(unmask bool) (pending bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.broken() {
		return false
	}
	for _, s := range d.slots {
		if s == nil {
			continue
		}
		if s.rxOff {
			s.rxOff = false
			if s.rx.EnableInterruptsAfter(s.rxArmAfter()) {
				pending = true
			}
		}
		if s.txWaiters > 0 || s.injectedOut > 0 || s.loopTxWait {
			s.txOn = true
			if s.tx.EnableInterrupts() {
				pending = true
			}
		}
	}
	if d.pendingWork {
		pending = true
	}
	if d.unmaskDue && !pending && unmask {
		d.unmaskDue = false
		d.stats.Unmasks++
		if err := d.fn.IRQ().Unmask(); err != nil {
			d.log.Warn("virtio-console: unmask interrupt", "err", err)
		}
	}
	return pending
}

// RecvTo hands every received buffer waiting for the port (up to
// maxRecvBuffers) to w in one WriteBuffers call and keeps what w did not
// take for the next call: w returns a short count without an error when its
// descriptor is full. Buffers w took are re-posted with one kick. more
// reports whether bytes are still waiting. A removed port or a stopped
// device is an error (ErrPortRemoved, ErrClosed); w's error is returned as
// is, and the bytes it did not take stay (SetGuestOpen(false) discards and
// counts them).
func (p *Port) RecvTo(w BuffersWriter) (n int, more bool, err error) {
	d, s := p.d, p.s
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := p.errLocked(); err != nil {
		return 0, false, err
	}
	if p.rxLost {
		p.rxLost = false
		return 0, s.fLen > 0, ErrDeviceReset
	}
	if s.port != p || s.fLen == 0 {
		return 0, false, nil
	}
	bufs := p.recvVec[:0]
	want := 0
	for k := 0; k < s.fLen && k < maxRecvBuffers; k++ {
		b := &s.rxBufs[s.fifo[(s.fHead+k)%len(s.fifo)]]
		data := b.mem.Bytes()[b.off:b.n]
		bufs = append(bufs, data)
		want += len(data)
	}
	n, err = w.WriteBuffers(bufs)
	clear(bufs)
	p.recvVec = bufs
	n = max(0, min(n, want))
	p.stats.BytesIn += uint64(n)
	for left := n; left > 0; {
		i := s.fifo[s.fHead]
		b := &s.rxBufs[i]
		k := min(left, b.n-b.off)
		b.off += k
		left -= k
		if b.off == b.n {
			s.fifoPop()
			d.releaseRxLocked(s, i)
		}
	}
	if n > 0 {
		d.kickRxLocked(s)
	}
	return n, s.fLen > 0, err
}

// SendFrom fills every free transmit buffer (up to maxSendBuffers) with one
// ReadBuffers call on r and queues what r read with one kick. r returns 0
// and no error when its descriptor has nothing for now, io.EOF at its end.
// block says why nothing (more) could be read: SendGated while the host
// side is away, SendFull while every buffer is with the device (transmit
// interrupts are then asked for at the next Arm). ErrDeviceReset reports
// bytes of an earlier call lost in a device reset.
func (p *Port) SendFrom(r BuffersReader) (n int, block SendBlock, err error) {
	d, s := p.d, p.s
	d.mu.Lock()
	defer d.mu.Unlock()
	if p.txLost {
		p.txLost = false
		return 0, SendOK, ErrDeviceReset
	}
	if err := p.errLocked(); err != nil {
		return 0, SendOK, err
	}
	if err := d.ensureTxLocked(s); err != nil {
		return 0, SendOK, err
	}
	d.reapTxLocked(s)
	if err := p.errLocked(); err != nil {
		return 0, SendOK, err
	}
	if !p.canSendLocked() {
		return 0, SendGated, nil
	}
	if len(s.txFree) == 0 {
		s.loopTxWait = true
		return 0, SendFull, nil
	}
	s.loopTxWait = false
	take := p.sendIdx[:0]
	bufs := p.sendVec[:0]
	total := 0
	for len(take) < maxSendBuffers && len(s.txFree) > 0 {
		j := s.txFree[len(s.txFree)-1]
		s.txFree = s.txFree[:len(s.txFree)-1]
		s.txBufs[j].owned = true
		b := s.txBufs[j].mem.Bytes()
		take = append(take, j)
		bufs = append(bufs, b)
		total += len(b)
	}
	n, err = r.ReadBuffers(bufs)
	n = max(0, min(n, total))
	clear(bufs)
	p.addFilledLocked(take, n)
	p.sendIdx, p.sendVec = take, bufs
	if n > 0 {
		p.kickTxLocked()
	}
	return n, SendOK, p.lostLocked(err)
}

// TxDrained reports whether the device has taken every byte SendFrom (or
// Send) queued; until it has, transmit interrupts are asked for at the next
// Arm. ErrDeviceReset reports bytes lost in a device reset.
func (p *Port) TxDrained() (bool, error) {
	d, s := p.d, p.s
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.txReady(s) {
		d.reapTxLocked(s)
	}
	if p.txLost {
		p.txLost = false
		return false, ErrDeviceReset
	}
	if err := p.errLocked(); err != nil {
		return false, err
	}
	done := p.txInflight == 0
	s.loopTxWait = !done
	return done, nil
}

// RxPending reports whether the device has returned receive buffers of the
// port that Poll has not taken yet, or bytes wait for RecvTo. It moves no
// event index: a loop spins on it with interrupts off.
func (p *Port) RxPending() bool {
	d, s := p.d, p.s
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.broken() || s.port != p {
		return false
	}
	return s.fLen > 0 || s.rx.Pending()
}

// SetRxBatch makes Arm ask for the port's receive interrupt only once n
// buffers are waiting (those RecvTo has not taken count), within 3/4 of
// the buffers the device holds: a loop that moves a stream in batches of
// about n buffers sets it, and must then wake up by itself after a while
// for the tail of the stream. 0 or 1: at the next buffer.
func (p *Port) SetRxBatch(n int) {
	p.d.mu.Lock()
	defer p.d.mu.Unlock()
	p.s.rxBatch = max(0, min(n, 1<<15))
}

// RxBuffered returns how many received buffers wait for RecvTo.
func (p *Port) RxBuffered() int {
	p.d.mu.Lock()
	defer p.d.mu.Unlock()
	if p.s.port != p {
		return 0
	}
	return p.s.fLen
}

// rxArmAfter is how many more used receive buffers the next interrupt
// waits for (SetRxBatch).
func (s *slot) rxArmAfter() uint16 {
	want := s.rxBatch - s.fLen
	if want <= 1 {
		return 1
	}
	return uint16(max(1, min(want, s.rx.InFlight()*3/4)))
}

// CanSend reports whether bytes queued now would reach the host (the host
// side is connected, or the port is a console).
func (p *Port) CanSend() bool {
	p.d.mu.Lock()
	defer p.d.mu.Unlock()
	return p.errLocked() == nil && p.canSendLocked()
}

// Ready says what a client that waits on the port outside the loop (an
// in-process endpoint, which calls RecvTo and SendFrom from its own
// goroutine) can do now: recv, RecvTo has bytes or an error for it; send,
// SendFrom would take bytes (the host side is connected and a transmit
// buffer is free) or report an error; drained, the device holds nothing the
// port queued. A loop calls it after Poll, which reclaims transmit buffers,
// to wake such a client only when waking it helps.
func (p *Port) Ready() (recv, send, drained bool) {
	d, s := p.d, p.s
	d.mu.Lock()
	defer d.mu.Unlock()
	if p.errLocked() != nil || s.port != p {
		return true, true, true
	}
	recv = p.rxLost || s.fLen > 0
	// Transmit buffers come with the first send: none yet is room.
	send = p.txLost || (p.canSendLocked() && (len(s.txFree) > 0 || s.txBufs == nil))
	drained = p.txLost || p.txInflight == 0
	return recv, send, drained
}

// A client outside the loop (an in-process endpoint) may spin on its
// port's receive ring after a request, as the loop spins for a socket
// client: QuietRx turns the receive interrupt off, TakeRx takes what the
// device returned, and ArmRx turns the interrupt on again before the
// client waits (re-checking the ring, as Arm does). The loop's own Disarm
// and Arm touch the same state under the same lock, so either may run in
// between: whoever arms last finds what arrived.

// QuietRx turns the port's receive interrupt off while a client spins on
// the ring; ArmRx (or the loop's next Arm) turns it on again.
func (p *Port) QuietRx() {
	d, s := p.d, p.s
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.broken() || s.port != p || !s.hotLocked() {
		return
	}
	s.rx.DisableInterrupts()
	s.rxOff = true
}

// TakeRx moves the buffers the device returned on the port's receive
// queue to the bytes waiting for RecvTo, and reports whether bytes (or an
// error) wait for RecvTo.
func (p *Port) TakeRx() bool {
	d, s := p.d, p.s
	d.mu.Lock()
	defer d.mu.Unlock()
	if p.errLocked() != nil || s.port != p || d.broken() {
		return true
	}
	if s.rx.Pending() {
		if err := d.serviceRxLocked(s); err != nil {
			d.faultLocked(err)
			return true
		}
	}
	return p.rxLost || s.fLen > 0
}

// ArmRx turns the receive interrupt QuietRx turned off on again. Buffers
// the device returned before that raise no interrupt: ArmRx takes them,
// and reports whether bytes (or an error) wait for RecvTo, in which case
// the caller reads instead of waiting.
func (p *Port) ArmRx() bool {
	d, s := p.d, p.s
	d.mu.Lock()
	defer d.mu.Unlock()
	if p.errLocked() != nil || s.port != p || d.broken() {
		return true
	}
	if s.rxOff {
		s.rxOff = false
		if s.rx.EnableInterruptsAfter(s.rxArmAfter()) {
			if err := d.serviceRxLocked(s); err != nil {
				d.faultLocked(err)
				return true
			}
		}
	}
	return p.rxLost || s.fLen > 0
}
