package virtiotest

// Console's queues: taking chains from the driver and returning them, the
// control queues both ways, and each port's data both ways, as QEMU's
// virtio-serial bus moves them.

import (
	"errors"

	"github.com/vserial/vserial/ring/ringtest"
)

// signal wakes Changed waiters. The channel is made only when someone
// waits, so a busy data path does not allocate.
func (c *Console) signal() {
	if c.changed != nil {
		close(c.changed)
		c.changed = nil
	}
}

func (c *Console) port(id uint32) *conPort {
	if i := c.index(id); i >= 0 {
		return c.ports[i]
	}
	return nil
}

func (c *Console) index(id uint32) int {
	for i, p := range c.ports {
		if p.id == id {
			return i
		}
	}
	return -1
}

func (c *Console) queue(q uint16) ringtest.Queue {
	if c.bus == nil {
		return nil
	}
	return c.bus.Queue(q)
}

func (c *Console) configChanged() {
	if c.bus != nil {
		c.bus.ConfigChanged()
	}
}

// pop takes the next available chain on d. A descriptor error makes the
// device need a reset, as QEMU's virtio_error does.
func (c *Console) pop(d ringtest.Queue) (ringtest.Chain, bool) {
	ch, ok, err := d.PopAppend(c.scratch[:0])
	if err != nil {
		c.stats.DescErrors++
		c.bus.NeedsReset()
		c.started = false
		return ringtest.Chain{}, false
	}
	return ch, ok
}

// push returns a chain, applying armed ring misbehaviour.
func (c *Console) push(q uint16, d ringtest.Queue, head uint16, written uint32) bool {
	if a, ok := c.ringBad[q]; ok {
		d.Misbehave(a.m)
		if !a.always {
			delete(c.ringBad, q)
		}
	}
	return d.Push(head, written)
}

func (c *Console) flushDelayed(q uint16) {
	if d := c.queue(q); d != nil && d.Flush() {
		c.bus.Interrupt(q)
	}
}

// sendControl is QEMU send_control_event/send_control_msg: the message goes
// into the next control receive buffer, or is dropped silently when there
// is none.
func (c *Console) sendControl(id uint32, event, value uint16, payload []byte) bool {
	b := make([]byte, 8+len(payload))
	le.PutUint32(b[0:], id)
	le.PutUint16(b[4:], event)
	le.PutUint16(b[6:], value)
	copy(b[8:], payload)
	return c.sendRaw(b, len(b))
}

// sendRaw copies msg into the writable part of the next control receive
// chain, truncating it if the chain is too small, and reports used length
// full (QEMU reports the full length even when it truncated).
func (c *Console) sendRaw(msg []byte, full int) bool {
	if !c.started || !c.multiport {
		c.stats.ControlDropped++
		return false
	}
	d := c.queue(ControlRxQueue)
	if d == nil {
		c.stats.ControlDropped++
		return false
	}
	ch, ok := c.pop(d)
	if !ok {
		c.stats.ControlDropped++
		return false
	}
	c.scratch = ch.Bufs
	rest := msg
	for _, b := range ch.Bufs {
		if !b.Write {
			continue
		}
		n := copy(b.Data, rest)
		rest = rest[n:]
	}
	c.stats.ControlSent++
	if c.push(ControlRxQueue, d, ch.Head, uint32(full)) {
		c.bus.Interrupt(ControlRxQueue)
	}
	return true
}

// controlOut is QEMU control_out: every chain on the control transmitq is
// parsed, handled and returned with used length 0.
func (c *Console) controlOut() {
	d := c.queue(ControlTxQueue)
	if d == nil {
		return
	}
	irq := false
	for {
		ch, ok := c.pop(d)
		if !ok {
			break
		}
		var msg []byte
		for _, b := range ch.Bufs {
			if !b.Write {
				msg = append(msg, b.Data...)
			}
		}
		irq = c.push(ControlTxQueue, d, ch.Head, 0) || irq
		c.handleControl(msg)
		if !c.started {
			break
		}
	}
	if irq && c.bus != nil {
		c.bus.Interrupt(ControlTxQueue)
	}
	c.signal()
}

// handleControl is QEMU handle_control_message.
func (c *Console) handleControl(b []byte) {
	if len(b) < 8 {
		c.stats.ControlBad++
		return
	}
	m := ControlMsg{ID: le.Uint32(b), Event: le.Uint16(b[4:]), Value: le.Uint16(b[6:]), Payload: append([]byte(nil), b[8:]...)}
	c.guestCtl = append(c.guestCtl, m)
	if c.bad.IgnoreGuestControl {
		return
	}
	p := c.port(m.ID)
	if p == nil && m.Event != CtrlDeviceReady {
		c.stats.ControlBad++ // QEMU: "invalid port id" error, ignored
		return
	}
	switch m.Event {
	case CtrlDeviceReady:
		if m.Value == 0 {
			return // QEMU only logs the failure
		}
		c.deviceReady = true
		for _, p := range append([]*conPort(nil), c.ports...) {
			c.sendControl(p.id, CtrlPortAdd, 1, nil)
			if c.bad.DuplicatePortAdd {
				c.sendControl(p.id, CtrlPortAdd, 1, nil)
			}
		}
		if c.bad.PortAddOutOfRange {
			mx := c.cfg.MaxPorts
			if c.bad.OverrideMaxNrPorts {
				mx = c.bad.MaxNrPorts
			}
			c.sendControl(mx, CtrlPortAdd, 1, nil)
		}
	case CtrlPortReady:
		if m.Value == 0 {
			return
		}
		p.ready = true
		if p.console {
			c.sendControl(p.id, CtrlConsolePort, 1, nil)
		}
		if name := c.wireName(p); name != nil {
			c.sendControl(p.id, CtrlPortName, 1, name)
		}
		if p.host {
			c.sendControl(p.id, CtrlPortOpen, 1, nil)
		}
		if c.bad.ReAddOnPortReady {
			c.sendControl(p.id, CtrlPortAdd, 1, nil)
		}
		c.flushToGuest(p)
	case CtrlPortOpen:
		p.guest = m.Value != 0
		if p.guest {
			c.flushToGuest(p)
		}
	default:
		// QEMU ignores every other event from the guest.
	}
}

func (c *Console) wireName(p *conPort) []byte {
	var name []byte
	switch {
	case c.bad.Name != nil:
		name = append(name, c.bad.Name...)
	case p.name != "":
		name = append(name, p.name...)
	default:
		return nil
	}
	if !c.bad.NameWithoutNUL {
		name = append(name, 0)
	}
	return name
}

// handleOutput is QEMU handle_output: with no port or no host connection
// every chain is returned with used length 0 and its bytes dropped;
// otherwise the bytes go to the host unless it is throttled.
func (c *Console) handleOutput(q uint16, p *conPort) {
	if p != nil && p.host && p.throttled {
		return
	}
	d := c.queue(q)
	if d == nil {
		return
	}
	irq := false
	for {
		ch, ok := c.pop(d)
		if !ok {
			break
		}
		c.scratch = ch.Bufs
		for _, b := range ch.Bufs {
			if b.Write {
				continue
			}
			if p != nil && p.host {
				p.fromGuest = append(p.fromGuest, b.Data...)
			} else {
				c.stats.TxDiscarded += uint64(len(b.Data))
			}
		}
		irq = c.push(q, d, ch.Head, 0) || irq
	}
	if irq {
		c.bus.Interrupt(q)
	}
	c.signal()
}

// discardTx returns every available chain on q with used length 0.
func (c *Console) discardTx(q uint16) {
	d := c.queue(q)
	if d == nil {
		return
	}
	irq := false
	for {
		ch, ok := c.pop(d)
		if !ok {
			break
		}
		for _, b := range ch.Bufs {
			if !b.Write {
				c.stats.TxDiscarded += uint64(len(b.Data))
			}
		}
		irq = c.push(q, d, ch.Head, 0) || irq
	}
	if irq {
		c.bus.Interrupt(q)
	}
}

// flushToGuest moves held host→guest bytes into posted receive buffers,
// each returned with the bytes written, then interrupts once. Nothing moves
// while the guest has the port closed (multiport), as QEMU reports zero
// readiness to the chardev then.
func (c *Console) flushToGuest(p *conPort) {
	if !c.started || len(p.pending()) == 0 || (c.multiport && !p.guest) || (!c.multiport && p.id != 0) {
		return
	}
	q := RxQueue(p.id)
	d := c.queue(q)
	if d == nil {
		return
	}
	irq := false
	for len(p.pending()) > 0 {
		ch, ok := c.pop(d)
		if !ok {
			break
		}
		c.scratch = ch.Bufs
		written := 0
		for _, b := range ch.Bufs {
			if !b.Write {
				continue
			}
			n := copy(b.Data, p.pending())
			p.toOff += n
			written += n
		}
		irq = c.push(q, d, ch.Head, uint32(written)) || irq
	}
	if irq {
		c.bus.Interrupt(q)
	}
	c.signal()
}

func boolValue(b bool) uint16 {
	if b {
		return 1
	}
	return 0
}

// ErrNoPort is returned by host-side calls for a port that does not exist.
var ErrNoPort = errors.New("virtiotest: no such port")

var _ Model = (*Console)(nil)
