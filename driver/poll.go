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

// A client outside the loop (an in-process endpoint) may spin on its
// port's receive ring after a request, as the loop spins for a socket
// client: QuietRx turns the receive interrupt off, TakeRx takes what the
// device returned, and ArmRx turns the interrupt on again before the
// client waits (re-checking the ring, as Arm does). The loop's own Disarm
// and Arm touch the same state under the same lock, so either may run in
// between: whoever arms last finds what arrived.
