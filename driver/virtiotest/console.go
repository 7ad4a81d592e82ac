package virtiotest

// Console: a virtio-console device model that behaves like QEMU 7.2's
// virtio-serial bus (hw/char/virtio-serial-bus.c, hw/char/virtio-console.c),
// quirks included (VIRTIO-NOTES §7.5–7.8, §12), with a host-side API for
// tests and switches for each way a device can lie.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/vserial/vserial/ring/ringtest"
)

// Console feature bits (spec 5.3.3) and the ring features QEMU offers.
const (
	FeatureSize       = 1 << 0
	FeatureMultiport  = 1 << 1
	FeatureEmergWrite = 1 << 2
	FeatureIndirect   = 1 << 28
	FeatureEventIdx   = 1 << 29
)

// Control message codes (spec 5.3.6.2: the "event" field).
const (
	CtrlDeviceReady = 0
	CtrlPortAdd     = 1
	CtrlPortRemove  = 2
	CtrlPortReady   = 3
	CtrlConsolePort = 4
	CtrlResize      = 5
	CtrlPortOpen    = 6
	CtrlPortName    = 7
)

// Queue numbers of the control queues (spec 5.3.2).
const (
	ControlRxQueue = 2 // device → driver ("c_ivq")
	ControlTxQueue = 3 // driver → device ("c_ovq")
)

// RxQueue and TxQueue return the receive and transmit queue of port id.
func RxQueue(id uint32) uint16 {
	if id == 0 {
		return 0
	}
	return uint16(2 * (id + 1))
}

// TxQueue returns the transmit queue of port id.
func TxQueue(id uint32) uint16 { return RxQueue(id) + 1 }

// queuePort maps a data queue to its port id and direction.
func queuePort(q uint16) (id uint32, tx bool, ok bool) {
	switch {
	case q < 2:
		return 0, q == 1, true
	case q < 4:
		return 0, false, false
	}
	return uint32(q)/2 - 1, q%2 == 1, true
}

// ConsoleConfig configures a Console. The zero value is QEMU's default
// virtio-serial-pci: max_ports 31, emergency write on.
type ConsoleConfig struct {
	// MaxPorts is QEMU's max_ports property (0 means 31). MULTIPORT is
	// offered iff it is greater than 1.
	MaxPorts uint32
	// NoEmergWrite turns EMERG_WRITE off (QEMU machine types ≤ 2.7).
	NoEmergWrite bool
	// QueueSize and ControlQueueSize are the queue sizes (QEMU: 128, 32).
	QueueSize, ControlQueueSize uint16
	// NoEventIdx and NoIndirect withdraw those ring features (QEMU
	// event_idx=off, indirect_desc=off).
	NoEventIdx, NoIndirect bool
	// OfferSize offers VIRTIO_CONSOLE_F_SIZE, which QEMU 7.2 never does:
	// the config fields cols and rows then hold what SetSize set, and
	// Resize may send RESIZE messages.
	OfferSize bool
	// ControlDelay makes the device handle its control transmitq that long
	// after the notify, on another goroutine, instead of during it. QEMU
	// does so when the doorbell goes through an ioeventfd (the default for
	// virtio-pci): its answers to DEVICE_READY, the replayed PORT_ADDs,
	// arrive after the driver's kick has returned.
	ControlDelay time.Duration
}

// ConsoleMisbehaviour makes the console break protocol rules. Switches stay
// on until changed with SetMisbehaviour.
type ConsoleMisbehaviour struct {
	// MaxNrPorts, when Override is set, is what the config space reports
	// as max_nr_ports (0, or more than the queues that exist).
	MaxNrPorts         uint32
	OverrideMaxNrPorts bool
	// PortAddOutOfRange announces port id MaxNrPorts (as reported) after
	// the real ports on every DEVICE_READY.
	PortAddOutOfRange bool
	// DuplicatePortAdd sends every PORT_ADD twice.
	DuplicatePortAdd bool
	// NameWithoutNUL sends names as the spec says (no trailing NUL).
	NameWithoutNUL bool
	// Name, when set, replaces every port's name bytes on the wire
	// (over-long, not UTF-8, containing '/' or NUL, ...).
	Name []byte
	// ReAddOnPortReady answers every PORT_READY with another PORT_ADD for
	// the same port, so a driver that re-acknowledges duplicates is kept
	// busy forever.
	ReAddOnPortReady bool
	// IgnoreGuestControl drops every control message from the guest
	// (no replay on DEVICE_READY, no answer to PORT_READY).
	IgnoreGuestControl bool
}

// ControlMsg is a control message as it crossed the control queues.
type ControlMsg struct {
	ID      uint32
	Event   uint16
	Value   uint16
	Payload []byte
}

// ConsoleStats counts what the model did.
type ConsoleStats struct {
	ControlSent    uint64 // control messages placed in the control receiveq
	ControlDropped uint64 // control messages dropped: no buffer (QEMU quirk)
	ControlBad     uint64 // malformed control messages from the guest
	TxDiscarded    uint64 // guest→host bytes discarded (host not connected, no port)
	DescErrors     uint64 // descriptor errors (device then needs reset)
	Resets         uint64
}

type conPort struct {
	id        uint32
	name      string
	console   bool
	host      bool   // host side connected
	guest     bool   // guest_connected (PORT_OPEN from the guest)
	ready     bool   // PORT_READY(1) seen since the last reset
	throttled bool   // host not reading: tx chains stay available
	toGuest   []byte // held host→guest bytes, from toOff on
	toOff     int
	fromGuest []byte
}

func (p *conPort) pending() []byte { return p.toGuest[p.toOff:] }

type armed struct {
	m      ringtest.Misbehaviour
	always bool
}

// Console is the device model. It is safe for concurrent use: the function
// calls the Model methods from the driver's goroutines while a test drives
// the host side.
type Console struct {
	mu          sync.Mutex
	cfg         ConsoleConfig
	bad         ConsoleMisbehaviour
	bus         Bus
	started     bool
	multiport   bool
	deviceReady bool
	ports       []*conPort // in plug order, like QEMU's port list
	emerg       []byte
	guestCtl    []ControlMsg
	stats       ConsoleStats
	ringBad     map[uint16]armed
	cols, rows  uint16        // config space console size (OfferSize)
	changed     chan struct{} // nil until someone waits
	scratch     []ringtest.Buf
}

// NewConsole returns a console with no ports.
func NewConsole(cfg ConsoleConfig) *Console {
	if cfg.MaxPorts == 0 {
		cfg.MaxPorts = 31
	}
	if cfg.QueueSize == 0 {
		cfg.QueueSize = 128
	}
	if cfg.ControlQueueSize == 0 {
		cfg.ControlQueueSize = 32
	}
	return &Console{cfg: cfg, ringBad: map[uint16]armed{}}
}

var le = binary.LittleEndian

// DeviceType implements Model.
func (c *Console) DeviceType() uint16 { return 3 }

// Features implements Model.
func (c *Console) Features() uint64 {
	var f uint64
	if !c.cfg.NoIndirect {
		f |= FeatureIndirect
	}
	if !c.cfg.NoEventIdx {
		f |= FeatureEventIdx
	}
	if c.cfg.MaxPorts > 1 {
		f |= FeatureMultiport
	}
	if !c.cfg.NoEmergWrite {
		f |= FeatureEmergWrite
	}
	if c.cfg.OfferSize {
		f |= FeatureSize
	}
	return f
}

func (c *Console) nqueues() uint16 {
	if c.cfg.MaxPorts > 1 {
		return uint16(min(2*(c.cfg.MaxPorts+1), 0xffff))
	}
	return 2
}

// QueueMax implements Model.
func (c *Console) QueueMax(q uint16) uint16 {
	if q >= c.nqueues() {
		return 0
	}
	if q == ControlRxQueue || q == ControlTxQueue {
		if c.cfg.MaxPorts > 1 {
			return c.cfg.ControlQueueSize
		}
	}
	return c.cfg.QueueSize
}

// ReadConfig implements Model: cols, rows (0 unless OfferSize and
// SetSize: QEMU never offers F_SIZE), max_nr_ports, emerg_wr.
func (c *Console) ReadConfig(off int, p []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var cfg [12]byte
	if c.cfg.OfferSize {
		le.PutUint16(cfg[0:], c.cols)
		le.PutUint16(cfg[2:], c.rows)
	}
	mx := c.cfg.MaxPorts
	if c.bad.OverrideMaxNrPorts {
		mx = c.bad.MaxNrPorts
	}
	le.PutUint32(cfg[4:], mx)
	n := len(cfg)
	if c.cfg.NoEmergWrite {
		n = 8
	}
	for i := range p {
		if off+i >= 0 && off+i < n {
			p[i] = cfg[off+i]
		} else {
			p[i] = 0
		}
	}
}

// WriteConfig implements Model. A write to emerg_wr with a non-zero low byte
// emits that byte on the first host-connected console port (QEMU
// set_config); the field reads back 0.
func (c *Console) WriteConfig(off int, p []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cfg.NoEmergWrite || off != 8 || len(p) == 0 || p[0] == 0 {
		return
	}
	for _, pt := range c.ports {
		if pt.console && pt.host {
			pt.fromGuest = append(pt.fromGuest, p[0])
			c.signal()
			return
		}
	}
	c.emerg = append(c.emerg, p[0])
}

// Start implements Model: the driver set DRIVER_OK.
func (c *Console) Start(b Bus) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.bus = b
	c.started = true
	c.multiport = b.Negotiated()&FeatureMultiport != 0
	if !c.multiport {
		// Without MULTIPORT port 0 is guest-connected at DRIVER_OK.
		if p := c.port(0); p != nil {
			p.guest = true
			p.ready = true
		}
	}
	for _, p := range c.ports {
		c.flushToGuest(p)
	}
	c.signal()
}

// Reset implements Model: every port becomes guest-disconnected; the host
// side keeps its state and its pending data.
func (c *Console) Reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.bus = nil
	c.started = false
	c.deviceReady = false
	c.multiport = false
	for _, p := range c.ports {
		p.guest = false
		p.ready = false
	}
	c.stats.Resets++
	c.signal()
}

// Notify implements Model.
func (c *Console) Notify(q uint16) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.started {
		return
	}
	c.flushDelayed(q)
	if c.multiport && q == ControlTxQueue {
		if c.cfg.ControlDelay > 0 {
			bus := c.bus
			time.AfterFunc(c.cfg.ControlDelay, func() {
				c.mu.Lock()
				defer c.mu.Unlock()
				// Not across a reset: that notify was for the old queue.
				if c.started && c.bus == bus {
					c.controlOut()
				}
			})
			return
		}
		c.controlOut()
		return
	}
	if q == ControlRxQueue && c.multiport {
		return
	}
	id, tx, ok := queuePort(q)
	if !ok || (!c.multiport && id != 0) {
		return
	}
	p := c.port(id)
	if tx {
		c.handleOutput(q, p)
	} else if p != nil {
		c.flushToGuest(p)
	}
}

// --- host-side API ---

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
