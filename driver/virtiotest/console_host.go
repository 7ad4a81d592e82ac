package virtiotest

// The host side of Console, for tests: ports plugged and unplugged, the
// host connected and its bytes, the device's control messages and
// resizes, the misbehaviour switches, and waits on the device's state.

import (
	"context"
	"fmt"

	"github.com/vserial/vserial/ring/ringtest"
)

// Plug adds a port. name "" means no name property; console makes it a
// virtconsole, which is host-connected from creation (as with a chardev
// attached). Before the driver is up the port is simply there (cold plug);
// afterwards QEMU sends PORT_ADD and raises a config interrupt.
func (c *Console) Plug(id uint32, name string, console bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if id >= c.cfg.MaxPorts {
		return fmt.Errorf("virtiotest: plug port %d: max_ports is %d", id, c.cfg.MaxPorts)
	}
	if c.port(id) != nil {
		return fmt.Errorf("virtiotest: plug port %d: id in use", id)
	}
	p := &conPort{id: id, name: name, console: console, host: console}
	c.ports = append(c.ports, p)
	if c.started && c.multiport {
		c.sendControl(id, CtrlPortAdd, 1, nil)
		c.configChanged()
	}
	c.signal()
	return nil
}

// Unplug removes a port: pending guest→host chains are returned with len 0,
// then PORT_REMOVE is sent. The port's receive buffers stay posted.
func (c *Console) Unplug(id uint32) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.dropLocked(id, "unplug"); err != nil {
		return err
	}
	if c.started {
		c.discardTx(TxQueue(id))
		if c.multiport {
			c.sendControl(id, CtrlPortRemove, 1, nil)
		}
	}
	c.signal()
	return nil
}

// Forget removes a port without telling the guest (a misbehaving device:
// its PORT_REMOVE is lost). Its queues stay as they are.
func (c *Console) Forget(id uint32) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.dropLocked(id, "forget"); err != nil {
		return err
	}
	c.signal()
	return nil
}

// dropLocked takes port id out of the port list; op names the caller in the
// error when there is no such port.
func (c *Console) dropLocked(id uint32, op string) error {
	i := c.index(id)
	if i < 0 {
		return fmt.Errorf("virtiotest: %s port %d: %w", op, id, ErrNoPort)
	}
	c.ports = append(c.ports[:i], c.ports[i+1:]...)
	return nil
}

// HostConnect connects or disconnects the host side of a virtserialport
// (chardev OPENED / CLOSED): PORT_OPEN(1/0) is sent; on disconnect pending
// guest→host chains are discarded.
func (c *Console) HostConnect(id uint32, connected bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.port(id)
	if p == nil {
		return fmt.Errorf("virtiotest: host connect port %d: %w", id, ErrNoPort)
	}
	if p.host == connected {
		return nil
	}
	p.host = connected
	if c.started {
		if c.multiport {
			c.sendControl(id, CtrlPortOpen, boolValue(connected), nil)
		}
		if !connected {
			p.throttled = false
			c.discardTx(TxQueue(id))
		} else {
			c.flushToGuest(p)
		}
	}
	c.signal()
	return nil
}

// HostWrite queues bytes from the host for port id. They reach the guest's
// receive buffers when the guest has the port open and has buffers posted.
func (c *Console) HostWrite(id uint32, b []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.port(id)
	if p == nil {
		return fmt.Errorf("virtiotest: host write port %d: %w", id, ErrNoPort)
	}
	if p.toOff == len(p.toGuest) {
		p.toGuest, p.toOff = p.toGuest[:0], 0
	}
	p.toGuest = append(p.toGuest, b...)
	c.flushToGuest(p)
	return nil
}

// HostReadInto moves up to len(b) bytes the guest sent on port id into b
// without waiting, and returns how many.
func (c *Console) HostReadInto(id uint32, b []byte) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.port(id)
	if p == nil {
		return 0
	}
	n := copy(b, p.fromGuest)
	rest := copy(p.fromGuest, p.fromGuest[n:])
	p.fromGuest = p.fromGuest[:rest]
	return n
}

// HostPending returns how many host→guest bytes are still held.
func (c *Console) HostPending(id uint32) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p := c.port(id); p != nil {
		return len(p.pending())
	}
	return 0
}

// HostRead returns and forgets the bytes the guest sent on port id.
func (c *Console) HostRead(id uint32) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.port(id)
	if p == nil {
		return nil
	}
	b := p.fromGuest
	p.fromGuest = nil
	return b
}

// HostReadFull waits until n bytes from the guest are available on port id
// and returns them (leaving any further bytes).
func (c *Console) HostReadFull(ctx context.Context, id uint32, n int) ([]byte, error) {
	for {
		c.mu.Lock()
		if c.changed == nil {
			c.changed = make(chan struct{})
		}
		ch := c.changed
		if p := c.port(id); p != nil && len(p.fromGuest) >= n {
			out := append([]byte(nil), p.fromGuest[:n]...)
			p.fromGuest = p.fromGuest[n:]
			c.mu.Unlock()
			return out, nil
		}
		c.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// SetThrottled makes the host stop (true) or resume (false) reading port
// id: while throttled the port's transmit chains stay available, so the
// guest's transmit queue fills (virtserialport back-pressure).
func (c *Console) SetThrottled(id uint32, throttled bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.port(id)
	if p == nil {
		return fmt.Errorf("virtiotest: throttle port %d: %w", id, ErrNoPort)
	}
	p.throttled = throttled
	if !throttled && c.started {
		c.handleOutput(TxQueue(id), p)
	}
	return nil
}

// GuestConnected reports whether the guest has port id open.
func (c *Console) GuestConnected(id uint32) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.port(id)
	return p != nil && p.guest
}

// PortReady reports whether the guest acknowledged port id with PORT_READY(1)
// since the last reset.
func (c *Console) PortReady(id uint32) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.port(id)
	return p != nil && p.ready
}

// DeviceReady reports whether the guest sent DEVICE_READY(1) since reset.
func (c *Console) DeviceReady() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.deviceReady
}

// Started reports whether the driver set DRIVER_OK since the last reset.
func (c *Console) Started() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.started
}

// SetSize sets the console size in the configuration space (OfferSize)
// and raises a configuration interrupt, which a driver without MULTIPORT
// takes as a resize of port 0 (Linux config_work_handler).
func (c *Console) SetSize(cols, rows uint16) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cols, c.rows = cols, rows
	c.configChanged()
	c.signal()
}

// Resize sends RESIZE for port id with the payload {cols, rows} when
// colsFirst (the spec's order), else {rows, cols} (the order Linux reads
// on most deployed kernels). QEMU 7.2 never sends it. It reports whether
// the message found a buffer.
func (c *Console) Resize(id uint32, cols, rows uint16, colsFirst bool) bool {
	var b [4]byte
	if colsFirst {
		le.PutUint16(b[0:], cols)
		le.PutUint16(b[2:], rows)
	} else {
		le.PutUint16(b[0:], rows)
		le.PutUint16(b[2:], cols)
	}
	return c.SendControl(id, CtrlResize, 0, b[:])
}

// EmergencyBytes returns bytes written through emerg_wr that found no
// host-connected console port.
func (c *Console) EmergencyBytes() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]byte(nil), c.emerg...)
}

// GuestControl returns every control message the guest sent, in order.
func (c *Console) GuestControl() []ControlMsg {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]ControlMsg(nil), c.guestCtl...)
}

// Stats returns the model's counters.
func (c *Console) Stats() ConsoleStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stats
}

// SetMisbehaviour replaces the protocol-level misbehaviour switches.
func (c *Console) SetMisbehaviour(m ConsoleMisbehaviour) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.bad = m
}

// MisbehaveRing arms ring-level misbehaviour for the next used buffer the
// model returns on queue q (always: for every one, until disarmed with a
// zero Misbehaviour).
func (c *Console) MisbehaveRing(q uint16, m ringtest.Misbehaviour, always bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if m == (ringtest.Misbehaviour{}) {
		delete(c.ringBad, q)
		if d := c.queue(q); d != nil {
			d.Misbehave(m) // NeverInterrupt and DelayPublish persist there
		}
		return
	}
	c.ringBad[q] = armed{m: m, always: always}
}

// SendControl places an arbitrary control message (header + payload) in
// the control receiveq and interrupts. It reports false if it was dropped
// for lack of a buffer.
func (c *Console) SendControl(id uint32, event, value uint16, payload []byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sendControl(id, event, value, payload)
}

// SendRaw places raw bytes (e.g. a message shorter than its header) in the
// control receiveq and reports whether a buffer was there.
func (c *Console) SendRaw(b []byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sendRaw(b, len(b))
}

// RawPush returns head on queue q with written bytes regardless of whether
// the chain exists (for hostile-device tests), and interrupts.
func (c *Console) RawPush(q uint16, head uint16, written uint32, m ringtest.Misbehaviour) {
	c.mu.Lock()
	defer c.mu.Unlock()
	d := c.queue(q)
	if d == nil {
		return
	}
	d.Misbehave(m)
	d.Push(head, written)
	if m.DelayPublish {
		d.Flush()
	}
	c.bus.Interrupt(q)
}

// SetQueueNotify makes the device ask the driver for kicks on q (true, the
// default) or not (false), as QEMU does while it is busy with a queue.
func (c *Console) SetQueueNotify(q uint16, enabled bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if d := c.queue(q); d != nil {
		d.SetNotify(enabled)
	}
}

// Interrupt raises a used-buffer interrupt for q (a spurious one if nothing
// is pending).
func (c *Console) Interrupt(q uint16) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.bus != nil {
		c.bus.Interrupt(q)
	}
}

// FlushDelayed publishes used entries held back by DelayPublish on every
// queue and interrupts if the driver asked for it.
func (c *Console) FlushDelayed() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for q := uint16(0); q < c.nqueues(); q++ {
		c.flushDelayed(q)
	}
}

// NeedsReset makes the device flag DEVICE_NEEDS_RESET.
func (c *Console) NeedsReset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.bus != nil {
		c.bus.NeedsReset()
	}
}

// Changed returns a channel closed at the next change of the model's state.
func (c *Console) Changed() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.changed == nil {
		c.changed = make(chan struct{})
	}
	return c.changed
}

// WaitFor waits until cond reports true. cond runs without the model's lock
// (it may call the model's methods) each time the model's state changes.
func (c *Console) WaitFor(ctx context.Context, cond func() bool) error {
	for {
		ch := c.Changed()
		if cond() {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// --- device internals (c.mu held) ---
