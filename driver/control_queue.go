package driver

// The control queues: received control messages are copied, handled and
// their buffers re-posted at once; messages to the device go one at a time.

import (
	"fmt"
	"time"

	"github.com/vserial/vserial/ring"
)

// maxControlPasses bounds how many rounds of control messages one service
// call handles before letting others take the lock (a device answering
// every answer with another message must not monopolise the driver).
const maxControlPasses = 64

// maxControlRate bounds the control messages the driver takes from a
// device in one second. Each one answers something the guest or the host
// did (a port plugged, named, opened): even a 511-port device replaying
// everything on DEVICE_READY sends a few thousand. A device past it is
// flooding; the driver resets it (and fails it past the reset budget).
var maxControlRate = 20_000 // a variable for tests

// controlFloodLocked counts a control message and reports a flood.
func (d *Device) controlFloodLocked() bool {
	now := time.Now()
	if now.Sub(d.ctrlWindow) > time.Second {
		d.ctrlWindow, d.ctrlCount = now, 0
	}
	d.ctrlCount++
	return d.ctrlCount > maxControlRate
}

// testHookControlCopied, when set by a test, sees the device's control
// buffer right after the driver copied it, so it can rewrite it the way a
// hostile device would between a check and a use.
var testHookControlCopied func(dmaBytes []byte)

func (d *Device) serviceControlPassesLocked(passes int) (more bool, err error) {
	q := d.queues[controlRxQueue]
	for range passes {
		progress := false
		// At most one queue's worth per pass: a device that fills each
		// buffer again as soon as it is re-posted must not keep the
		// driver (and its lock) in here forever.
		for n := 0; n < int(q.Size()); n++ {
			u, ok, err := q.Pop()
			if err != nil {
				return false, fmt.Errorf("control receiveq: %w", err)
			}
			if !ok {
				break
			}
			if d.controlFloodLocked() {
				return false, fmt.Errorf("%w: control flood: more than %d control messages within %v",
					ErrDeviceProtocolConsole, maxControlRate, time.Second)
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
		d.violationLocked(fmt.Errorf("%w: control transmitq stalled, %s for port %d dropped", ErrDeviceProtocolConsole, ctrlName(event), id), nil)
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

// allocControlLocked allocates the control receive buffers (one page per
// descriptor, filling the queue as Linux does, up to maxRxBuffers) and the
// control transmit messages (8 bytes each, in one region).
func (d *Device) allocControlLocked() error {
	rq, tq := d.queues[controlRxQueue], d.queues[controlTxQueue]
	d.ctrlRxHead = newHeadMap(int(rq.Size()))
	for range min(int(rq.Size()), maxRxBuffers) {
		r, err := d.alloc.Alloc(bufSize, 8)
		if err != nil {
			return fmt.Errorf("control receive buffers: %w", err)
		}
		d.ctrlRxBufs = append(d.ctrlRxBufs, r)
	}
	n := int(tq.Size())
	r, err := d.alloc.Alloc(n*controlHeaderLen, 8)
	if err != nil {
		return fmt.Errorf("control transmit buffers: %w", err)
	}
	d.ctrlTxMem = r
	d.ctrlTxHead = newHeadMap(n)
	for i := n - 1; i >= 0; i-- {
		d.ctrlTxFree = append(d.ctrlTxFree, int32(i))
	}
	return nil
}

// fillControlRxLocked posts every control receive buffer.
func (d *Device) fillControlRxLocked() (notify bool, err error) {
	q := d.queues[controlRxQueue]
	for i, r := range d.ctrlRxBufs {
		d.seg[0] = ring.Segment{Addr: r.Addr(), Len: uint32(r.Len()), Write: true}
		head, err := q.Add(d.seg[:])
		if err != nil {
			return false, fmt.Errorf("post control buffer: %w", err)
		}
		d.ctrlRxHead[head] = int32(i)
	}
	return q.Publish(), nil
}
