package virtiotest

// Console: a virtio-console device model that behaves like QEMU 7.2's
// virtio-serial bus (hw/char/virtio-serial-bus.c, hw/char/virtio-console.c),
// quirks included (VIRTIO-NOTES §7.5–7.8, §12), with a host-side API for
// tests and switches for each way a device can lie.

import (
	"encoding/binary"
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
