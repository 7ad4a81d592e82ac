package driver

// The event loop: one goroutine waits for the function's interrupt, reads
// the ISR (INTx), re-arms the interrupt and services the queues: all of
// them, or with MSI-X and a VectorIRQ only those on the vectors that fired.
// Idle, it sits in IRQ.Wait (the Go poller): no polling, no timers.

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/vserial/vserial/ring"
)

// isrConfig is the ISR's configuration-change bit (spec 4.1.4.5). The
// queue bit needs no test: an INTx wake-up drains every queue anyway.
const isrConfig = 2

// allVectors is the vector set that services everything: INTx, an IRQ
// that cannot say which vector fired, or work left from the last round.
const allVectors = ^uint64(0)

// maxControlPasses bounds how many rounds of control messages one service
// call handles before letting others take the lock (a device answering
// every answer with another message must not monopolise the driver).
const maxControlPasses = 64

func (d *Device) loop(ctx context.Context) {
	defer close(d.loopDone)
	irq := d.fn.IRQ()
	vi, byVector := irq.(VectorIRQ)
	byVector = byVector && irq.MSIXVectors() > 0
	more := false
	for {
		d.mu.Lock()
		more = more || d.pendingWork
		d.pendingWork = false
		d.mu.Unlock()
		fired := allVectors
		if !more {
			var err error
			if byVector {
				fired, err = vi.WaitVectors(ctx)
			} else {
				err = irq.Wait(ctx)
			}
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				d.mu.Lock()
				d.fatalLocked(fmt.Errorf("driver: wait for interrupt: %w", err))
				d.mu.Unlock()
				return
			}
		}
		d.mu.Lock()
		if d.broken() {
			d.mu.Unlock()
			return
		}
		if !more {
			d.stats.Interrupts++
			// With MSI-X, configuration changes come on vecConfig.
			config := fired&vectorBit(d.vecConfig) != 0
			if irq.MSIXVectors() == 0 {
				isr, err := d.t.ISR()
				if err != nil {
					d.log.Warn("virtio-console: read ISR", "err", err)
				}
				config = isr&isrConfig != 0
			}
			if err := irq.Unmask(); err != nil {
				d.log.Warn("virtio-console: unmask interrupt", "err", err)
			}
			if config {
				d.checkStatusLocked()
				if d.sizeF && !d.multiport && !d.broken() {
					// Linux: a configuration change of a device without
					// MULTIPORT is a resize of port 0.
					d.configSizeLocked()
				}
			}
		}
		more = d.serviceLocked(fired)
		d.mu.Unlock()
	}
}

// checkStatusLocked handles a configuration interrupt: in multiport mode
// config changes carry no information (Linux ignores them), but
// DEVICE_NEEDS_RESET (spec 2.1.2) does.
func (d *Device) checkStatusLocked() {
	st, err := d.t.Status()
	if err != nil {
		d.log.Warn("virtio-console: read status", "err", err)
		return
	}
	if st&StatusDeviceNeedsReset != 0 {
		d.faultLocked(fmt.Errorf("%w: device set DEVICE_NEEDS_RESET (status %#x)", ErrDeviceProtocolConsole, st))
	} else if st&StatusDriverOK == 0 {
		d.faultLocked(fmt.Errorf("%w: device dropped DRIVER_OK (status %#x)", ErrDeviceProtocolConsole, st))
	}
}

// serviceLocked drains the queues on the vectors in fired (allVectors:
// every queue). It reports true if control work was left for another
// round.
func (d *Device) serviceLocked(fired uint64) (more bool) {
	if d.broken() {
		return false
	}
	if err := d.serviceDataLocked(fired); err != nil {
		d.faultLocked(err)
		return false
	}
	if d.multiport && fired&vectorBit(d.vecConfig) != 0 {
		more, err := d.serviceControlPassesLocked(maxControlPasses)
		if err != nil {
			d.faultLocked(err)
			return false
		}
		return more
	}
	return false
}

func (d *Device) serviceDataLocked(fired uint64) error {
	for _, s := range d.slots {
		if s == nil || fired&vectorBit(d.queueVector(s.rxq)) == 0 {
			continue
		}
		if err := d.serviceRxLocked(s); err != nil {
			return err
		}
		if err := d.reapTxErrLocked(s); err != nil {
			return err
		}
	}
	return nil
}

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
	d.kickRxLocked(s)
	if got {
		wake(p.rxWake)
	}
	return nil
}

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

// portError wraps a ring violation with the port and queue it hit; a nil
// err means the device returned a buffer on a queue where none was posted.
func portError(s *slot, queue string, err error) error {
	if err == nil {
		err = fmt.Errorf("%w: used buffer on an empty queue", ring.ErrDeviceProtocol)
	}
	return &portFault{id: s.id, queue: queue, err: err}
}

type portFault struct {
	id    uint32
	queue string
	err   error
}

func (e *portFault) Error() string { return fmt.Sprintf("port %d %s: %v", e.id, e.queue, e.err) }
func (e *portFault) Unwrap() error { return e.err }

// --- control queues ---

// testHookControlCopied, when set by a test, sees the device's control
// buffer right after the driver copied it, so it can rewrite it the way a
// hostile device would between a check and a use.
var testHookControlCopied func(dmaBytes []byte)

func (d *Device) serviceControlPassesLocked(passes int) (more bool, err error) {
	q := d.queues[controlRxQueue]
	for range passes {
		progress := false
		for {
			u, ok, err := q.Pop()
			if err != nil {
				return false, fmt.Errorf("control receiveq: %w", err)
			}
			if !ok {
				break
			}
			d.popped++
			progress = true
			i := d.ctrlRxHead[u.Head]
			if i < 0 {
				return false, fmt.Errorf("control receiveq: %w: head %d has no buffer", ring.ErrDeviceProtocol, u.Head)
			}
			d.ctrlRxHead[u.Head] = -1
			d.stats.ControlIn++
			// u.Len is already clamped to the buffer: QEMU reports the
			// full length of a message it truncated (VIRTIO-NOTES §12.2).
			// Copy, then validate: the device can rewrite its buffer at
			// any time, so the checks and the use must see one private
			// copy (no double fetch from device memory).
			msg := d.ctrlCopy[:copy(d.ctrlCopy[:], d.ctrlRxBufs[i].Bytes()[:u.Len])]
			if testHookControlCopied != nil {
				testHookControlCopied(d.ctrlRxBufs[i].Bytes()[:u.Len])
			}
			d.inControl = true
			d.handleControlLocked(msg)
			d.inControl = false
			if d.broken() {
				return false, nil
			}
			// Re-post at once: QEMU drops messages that find no buffer.
			r := d.ctrlRxBufs[i]
			d.seg[0] = ring.Segment{Addr: r.Addr(), Len: uint32(r.Len()), Write: true}
			head, err := q.Add(d.seg[:])
			if err != nil {
				return false, fmt.Errorf("control receiveq: re-post: %w", err)
			}
			d.ctrlRxHead[head] = i
			if q.Publish() {
				d.notifyLocked(controlRxQueue)
			}
		}
		sent, err := d.flushControlLocked()
		if err != nil {
			return false, err
		}
		if !progress && !sent {
			return false, nil
		}
	}
	return true, nil
}

// sendControlLocked queues a control message for the device and sends what
// the control transmitq has room for.
func (d *Device) sendControlLocked(id uint32, event, value uint16) {
	if d.broken() {
		return
	}
	if len(d.ctrlQueue) >= maxEventBacklog {
		d.violationLocked(fmt.Errorf("%w: control transmitq stalled, %s for port %d dropped", ErrDeviceProtocolConsole, eventName(event), id), nil)
		return
	}
	d.ctrlQueue = append(d.ctrlQueue, ctrlOut{id: id, event: event, value: value})
	if d.recovering || d.inControl {
		// Sent after the control receive buffers are re-posted.
		return
	}
	if _, err := d.flushControlLocked(); err != nil {
		d.faultLocked(err)
	}
}

// flushControlLocked reclaims control transmit buffers and sends the next
// queued message, if the previous one has been taken. One message at a
// time: QEMU answers each (PORT_READY with up to three messages) before it
// returns the buffer, and drops answers that find no control receive
// buffer; sending one by one lets the driver re-post its receive buffers
// between answers, so none is lost even with many ports.
func (d *Device) flushControlLocked() (sentAny bool, err error) {
	q := d.queues[controlTxQueue]
	for {
		u, ok, err := q.Pop()
		if err != nil {
			return false, fmt.Errorf("control transmitq: %w", err)
		}
		if !ok {
			break
		}
		d.popped++
		i := d.ctrlTxHead[u.Head]
		if i < 0 {
			return false, fmt.Errorf("control transmitq: %w: head %d has no buffer", ring.ErrDeviceProtocol, u.Head)
		}
		d.ctrlTxHead[u.Head] = -1
		d.ctrlTxFree = append(d.ctrlTxFree, i)
	}
	if q.InFlight() > 0 {
		return false, nil
	}
	sent := 0
	for sent < len(d.ctrlQueue) && sent < 1 && len(d.ctrlTxFree) > 0 {
		m := d.ctrlQueue[sent]
		i := d.ctrlTxFree[len(d.ctrlTxFree)-1]
		r, err := d.ctrlTxMem.Sub(int(i)*controlHeaderLen, controlHeaderLen)
		if err != nil {
			return false, err
		}
		putControl(r.Bytes(), d.order, m.id, m.event, m.value)
		d.seg[0] = ring.Segment{Addr: r.Addr(), Len: controlHeaderLen}
		head, err := q.Add(d.seg[:])
		if err != nil {
			return false, fmt.Errorf("control transmitq: %w", err)
		}
		d.ctrlTxFree = d.ctrlTxFree[:len(d.ctrlTxFree)-1]
		d.ctrlTxHead[head] = i
		d.stats.ControlOut++
		sent++
	}
	if sent > 0 {
		n := copy(d.ctrlQueue, d.ctrlQueue[sent:])
		d.ctrlQueue = d.ctrlQueue[:n]
		if q.Publish() {
			// QEMU processes the control transmitq synchronously here.
			d.notifyLocked(controlTxQueue)
		}
	}
	return sent > 0, nil
}

// drainControlTxLocked waits, bounded, until the device took every queued
// control message.
func (d *Device) drainControlTxLocked(limit time.Duration) {
	deadline := time.Now().Add(limit)
	for {
		if _, err := d.flushControlLocked(); err != nil {
			return
		}
		if len(d.ctrlQueue) == 0 && d.queues[controlTxQueue].InFlight() == 0 {
			return
		}
		if time.Now().After(deadline) {
			d.log.Warn("virtio-console: device did not take control messages", "queued", len(d.ctrlQueue))
			return
		}
		d.mu.Unlock()
		time.Sleep(time.Millisecond)
		d.mu.Lock()
	}
}

// lookupLocked returns the live port with id, counting a violation for an
// id the device never announced.
func (d *Device) lookupLocked(m controlMsg) (*Port, bool) {
	if m.ID >= d.maxNr {
		d.violationLocked(fmt.Errorf("%w: %s for port %d, max_nr_ports is %d", ErrControl, eventName(m.Event), m.ID, d.maxNr), nil)
		return nil, false
	}
	if m.ID >= uint32(len(d.slots)) || d.slots[m.ID] == nil {
		return nil, false // a port beyond the cap: ignored, already logged
	}
	p := d.slots[m.ID].port
	if p == nil || p.removed {
		d.violationLocked(fmt.Errorf("%w: %s for port %d, which does not exist", ErrControl, eventName(m.Event), m.ID), nil)
		return nil, false
	}
	return p, true
}

// handleControlLocked acts on one control message from the device
// (VIRTIO-NOTES §7.4–7.7).
func (d *Device) handleControlLocked(b []byte) {
	m, err := parseControl(b, d.order)
	if err != nil {
		d.violationLocked(err, nil)
		return
	}
	switch m.Event {
	case eventPortAdd:
		d.portAddLocked(m.ID)
	case eventPortRemove:
		if p, ok := d.lookupLocked(m); ok {
			d.infoLocked("virtio-console: port removed", "port", p.id, "name", p.name)
			d.removePortLocked(p.s)
		}
	case eventConsolePort:
		p, ok := d.lookupLocked(m)
		if !ok || m.Value == 0 { // Linux ignores CONSOLE_PORT(0)
			return
		}
		if !p.console {
			p.console = true
			p.changedLocked()
			d.emitLocked(p, PortChanged)
			wake(p.txWake)
		}
		// Spec 5.3.6.2: answer CONSOLE_PORT with PORT_OPEN(1).
		if !p.guestOpen {
			p.guestOpen = true
			d.sendControlLocked(p.id, eventPortOpen, 1)
		}
	case eventPortOpen:
		p, ok := d.lookupLocked(m)
		if !ok {
			return
		}
		if c := m.Value != 0; c != p.hostConnected {
			p.hostConnected = c
			d.infoLocked("virtio-console: host connection", "port", p.id, "name", p.name, "connected", c)
			p.changedLocked()
			d.emitLocked(p, PortChanged)
			wake(p.txWake)
		}
	case eventPortName:
		p, ok := d.lookupLocked(m)
		if !ok {
			return
		}
		d.portNameLocked(p, m.Payload)
	case eventResize:
		p, ok := d.lookupLocked(m)
		if !ok {
			return
		}
		if !p.console {
			d.violationLocked(fmt.Errorf("%w: RESIZE for port %d, which is not a console", ErrControl, p.id), p)
			return
		}
		if !d.sizeF {
			// Linux resizes only with F_SIZE negotiated (resize_console).
			d.log.Debug("virtio-console: RESIZE without F_SIZE ignored", "port", p.id)
			return
		}
		cols, rows, err := parseResize(m.Payload, d.order, d.cfg.ResizeOrder)
		if err != nil {
			d.violationLocked(fmt.Errorf("port %d: %w", p.id, err), p)
			return
		}
		d.setSizeLocked(p, cols, rows)
	default:
		// Unknown codes, and driver→device codes coming back: ignored.
		d.stats.UnknownEvents++
		d.log.Debug("virtio-console: ignored control event", "event", eventName(m.Event), "port", m.ID)
	}
}

// portAddLocked handles PORT_ADD (VIRTIO-NOTES §7.5 step 5).
func (d *Device) portAddLocked(id uint32) {
	if id >= d.maxNr {
		// Linux warns and ignores: no PORT_READY.
		d.violationLocked(fmt.Errorf("%w: PORT_ADD for port %d, max_nr_ports is %d", ErrControl, id, d.maxNr), nil)
		return
	}
	if id >= uint32(len(d.slots)) || d.slots[id] == nil {
		d.stats.IgnoredPorts++
		d.infoLocked("virtio-console: port beyond the configured cap ignored", "port", id, "cap", d.nslots)
		return
	}
	s := d.slots[id]
	if p := s.port; p != nil && !p.removed {
		if !p.reannounce {
			// The spec forbids it; Linux re-acknowledges.
			d.violationLocked(fmt.Errorf("%w: duplicate PORT_ADD for port %d", ErrControl, id), p)
			d.sendControlLocked(id, eventPortReady, 1)
			return
		}
		// Back after a device reset.
		p.reannounce = false
		p.nameCheck = true
		s.posting = true
		d.postRxLocked(s)
		d.kickRxLocked(s)
		d.sendControlLocked(id, eventPortReady, 1)
		if p.guestOpen {
			d.sendControlLocked(id, eventPortOpen, 1)
		}
		p.wakeAll()
		return
	}
	if err := d.ensureRxLocked(s); err != nil {
		d.log.Warn("virtio-console: port setup failed", "port", id, "err", err)
		d.sendControlLocked(id, eventPortReady, 0)
		return
	}
	s.posting = true
	d.postRxLocked(s)
	d.kickRxLocked(s)
	p := newPort(d, s)
	s.port = p
	s.gen++
	d.infoLocked("virtio-console: port added", "port", id)
	d.emitLocked(p, PortAdded)
	d.sendControlLocked(id, eventPortReady, 1)
}

// portNameLocked handles PORT_NAME: the name is stored once per port.
func (d *Device) portNameLocked(p *Port, payload []byte) {
	name, err := parsePortName(payload)
	if err != nil {
		d.violationLocked(fmt.Errorf("port %d: %w", p.id, err), p)
		p.nameCheck = false
		return
	}
	if p.nameCheck {
		p.nameCheck = false
		if p.name != "" && p.name != name {
			// A different port came back under this id after a reset.
			d.infoLocked("virtio-console: port renamed across reset", "port", p.id, "was", p.name, "name", name)
			s, wasOpen := p.s, p.guestOpen
			d.removePortLocked(s)
			if wasOpen {
				d.sendControlLocked(s.id, eventPortOpen, 0)
			}
			np := newPort(d, s)
			np.name = name
			s.port = np
			s.gen++
			d.emitLocked(np, PortAdded)
			return
		}
	}
	if p.name != "" {
		return // stored once (Linux)
	}
	p.name = name
	d.infoLocked("virtio-console: port named", "port", p.id, "name", name)
	p.changedLocked()
	d.emitLocked(p, PortChanged)
}

// removePortLocked detaches the slot's port: waiters wake with
// ErrPortRemoved, in-flight transmissions are forgotten, unread data is
// discarded; the receive buffers stay posted in the live queue.
func (d *Device) removePortLocked(s *slot) {
	p := s.port
	if p == nil {
		return
	}
	p.discardRxLocked()
	p.removed = true
	p.hostConnected = false
	p.txInflight = 0
	s.gen++
	s.port = nil
	p.changedLocked()
	p.wakeAll()
	d.emitLocked(p, PortRemoved)
}

// violationLocked counts and logs a device protocol violation that does not
// need a reset (the message or the port is isolated instead).
func (d *Device) violationLocked(err error, p *Port) {
	d.stats.Violations++
	if p != nil {
		p.stats.Violations++
	}
	// A hostile device must not flood the log: the first ones are logged,
	// then one in a thousand with the running count.
	if n := d.stats.Violations; n <= 32 || n%1000 == 0 {
		d.log.Warn("virtio-console: device protocol violation", "err", err, "violations", n)
		d.emitDeviceLocked(PortEvent{Port: p, Kind: ProtocolViolation, Err: err, Violations: n})
	}
}

// faultLocked recovers from a device fault by resetting and
// re-initialising the device, within a budget of resets per minute; past
// it, or if re-initialisation keeps failing, the device is failed.
func (d *Device) faultLocked(cause error) {
	if d.broken() || d.recovering {
		return
	}
	d.recovering = true
	defer func() { d.recovering = false }()
	for {
		d.stats.Violations++
		var pf *portFault
		if errors.As(cause, &pf) && pf.id < uint32(len(d.slots)) {
			if s := d.slots[pf.id]; s != nil && s.port != nil {
				s.port.stats.Violations++
			}
		}
		now := time.Now()
		keep := d.resetTimes[:0]
		for _, t := range d.resetTimes {
			if now.Sub(t) < resetWindow {
				keep = append(keep, t)
			}
		}
		d.resetTimes = keep
		if len(d.resetTimes) >= d.maxResets {
			d.fatalLocked(fmt.Errorf("driver: device failed: %d resets within %v, last: %w", len(d.resetTimes), resetWindow, cause))
			return
		}
		d.resetTimes = append(d.resetTimes, now)
		d.stats.Resets++
		d.log.Warn("virtio-console: device fault, resetting", "err", cause, "resets", d.stats.Resets)
		d.emitDeviceLocked(PortEvent{Kind: DeviceReset, Err: cause, Violations: d.stats.Violations})
		err := d.bringUpLocked(false)
		if err == nil {
			return
		}
		cause = err
	}
}

// fatalLocked stops the device for good: it is reset so that it no longer
// touches memory, every port is removed and Done closes with err.
func (d *Device) fatalLocked(err error) {
	if d.broken() {
		return
	}
	d.log.Error("virtio-console: device failed", "err", err)
	if rerr := d.t.Reset(); rerr != nil {
		d.log.Warn("virtio-console: reset failed device", "err", rerr)
	}
	d.failed = true
	d.stopLocked(err)
}

// emitDeviceLocked queues a device-level event for Events, in order with
// the port events around it.
func (d *Device) emitDeviceLocked(ev PortEvent) {
	if len(d.evq) >= maxEventBacklog {
		d.stats.Dropped++
		return
	}
	d.evq = append(d.evq, ev)
	wake(d.evWake)
	d.wakeLoopLocked()
}
