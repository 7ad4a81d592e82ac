package driver

// The console device: bring-up (spec 3.1.1 with the console steps of
// VIRTIO-NOTES §7.5), queues and buffers, recovery by reset, and Close.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/bits"
	"sync"
	"time"

	"github.com/vserial/vserial/dma"
	"github.com/vserial/vserial/ring"
)

// Console feature bits (spec 5.3.3) and ring features.
const (
	FeatureConsoleSize       = uint64(1) << 0
	FeatureConsoleMultiport  = uint64(1) << 1
	FeatureConsoleEmergWrite = uint64(1) << 2
	FeatureIndirectDesc      = uint64(1) << 28
	FeatureEventIdx          = uint64(1) << 29
)

// Queue numbers of the control queues (spec 5.3.2).
const (
	controlRxQueue = 2
	controlTxQueue = 3
)

// maxQueueSize caps the size the driver programs on the modern interface
// (it may lower the device's size, spec 4.1.4.3); legacy sizes are fixed by
// the device and only bounded.
const (
	maxQueuePorts      = 0x7fff
	maxQueueSize       = 256
	maxLegacyQueueSize = 1024
)

// Default recovery budget: resets allowed within resetWindow before the
// device is declared dead.
const (
	defaultMaxResets = 5
	resetWindow      = time.Minute
)

// Config configures Open.
type Config struct {
	// MaxPorts caps max_nr_ports (0: no cap beyond 0x8000). Ports with
	// larger ids are ignored with a log line and never acknowledged.
	MaxPorts uint32
	// Index is the device index D used in fallback names "vport<D>p<ID>".
	Index int
	// RxBuffers is the number of 4096-byte receive buffers per port
	// (0: fill the queue, as Linux does).
	RxBuffers int
	// TxBuffers is the number of transmit buffers per port that may be in
	// flight (0: 32).
	TxBuffers int
	// TxBufferSize is the size of each transmit buffer (0: 32 KiB, the
	// most Linux puts in one descriptor). QEMU writes a transmit buffer to
	// the chardev in one piece, so larger buffers mean fewer descriptors,
	// kicks and reads per byte. If memory that large cannot be allocated
	// contiguously the driver falls back to 4096-byte buffers.
	TxBufferSize int
	// ResizeOrder is the field order of RESIZE payloads (default: rows
	// first, as most deployed Linux guests read it).
	ResizeOrder ResizeOrder
	// MaxResets bounds recoveries within a minute (0: 5); one more device
	// violation then fails the device.
	MaxResets int
	// ExternalLoop: Open starts no event loop of its own. The caller waits
	// for the interrupt itself (IRQFDs) and drives the device through
	// HandleIRQ, Poll, Arm and Disarm (poll.go; package pump does).
	ExternalLoop bool
	Logger       *slog.Logger
}

// PortEventKind says what happened to a port.
type PortEventKind uint8

const (
	PortAdded   PortEventKind = iota + 1 // the device announced the port (PORT_ADD)
	PortRemoved                          // unplugged, or gone with the device
	PortChanged                          // name, host connection, console state or size

	// Device-level kinds: Err says what happened, Violations is the
	// device's count of protocol violations so far.

	// DeviceReset: the driver reset the device to recover from Err (a
	// ring violation, a broken control queue, DEVICE_NEEDS_RESET...). Port
	// is nil. The ports' own events follow as the device re-announces them.
	DeviceReset
	// ProtocolViolation: the device broke the protocol and the driver
	// ignored the message or isolated the port instead of resetting. Port
	// is the port concerned, or nil. Rate-limited like the log: the first
	// 32 of a device, then one in 1000.
	ProtocolViolation
)

func (k PortEventKind) String() string {
	switch k {
	case PortAdded:
		return "added"
	case PortRemoved:
		return "removed"
	case PortChanged:
		return "changed"
	case DeviceReset:
		return "reset"
	case ProtocolViolation:
		return "violation"
	}
	return fmt.Sprintf("PortEventKind(%d)", uint8(k))
}

// PortEvent reports a change of a port, or of the device (DeviceReset,
// ProtocolViolation).
type PortEvent struct {
	Port       *Port
	Kind       PortEventKind
	Err        error  // device-level kinds: the fault or violation
	Violations uint64 // device-level kinds: DeviceStats.Violations then
}

// DeviceStats counts what the driver has seen of the device.
type DeviceStats struct {
	Violations    uint64 // device protocol violations (rings and control messages)
	Resets        uint64 // recoveries by device reset
	UnknownEvents uint64 // control events with an unknown or driver-only code
	Dropped       uint64 // port and device events dropped because nobody read Events
	IgnoredPorts  uint64 // PORT_ADD beyond the configured cap
	Discarded     uint64 // host→guest bytes for no live port
	ControlIn     uint64 // control messages received
	ControlOut    uint64 // control messages sent
	Interrupts    uint64 // wake-ups of the event loop
	// LogsSuppressed counts device-driven log lines held back by the rate
	// limit (ratelog.go).
	LogsSuppressed uint64
	Kicks          uint64 // available-buffer notifications sent (MMIO doorbell writes)
	Unmasks        uint64 // INTx re-enabled after an interrupt (external loop only)
	// Injected counts descriptors InjectFault posted; InjectedAccepted
	// those the device used instead of refusing them.
	Injected         uint64
	InjectedAccepted uint64
}

// maxEventBacklog bounds the port events waiting for a reader.
const maxEventBacklog = 1 << 14

// Device is a virtio-console device driven by this process.
type Device struct {
	cfg   Config
	log   *slog.Logger
	fn    Function
	t     transport
	alloc dma.Allocator
	order binary.ByteOrder // of control messages and config fields

	features   uint64
	multiport  bool
	maxNr      uint32 // max_nr_ports as the device reported it (validated)
	nslots     uint32 // port ids served: min(maxNr, caps)
	vecConfig  uint16 // configuration changes and the control queues
	nvec       int    // MSI-X vectors routed (0: INTx)
	eventIdx   bool
	sizeF      bool // VIRTIO_CONSOLE_F_SIZE negotiated
	emergF     bool // VIRTIO_CONSOLE_F_EMERG_WRITE negotiated
	maxResets  int
	loopCancel context.CancelFunc
	loopDone   chan struct{}
	fwdDone    chan struct{}

	mu         sync.Mutex
	queues     []virtqueue // by queue number; nil where not set up
	ctrlRxBufs []dma.Region
	ctrlRxHead []int32 // head → index in ctrlRxBufs
	ctrlTxMem  dma.Region
	ctrlTxHead []int32 // head → slot in ctrlTxMem, -1
	ctrlTxFree []int32
	ctrlQueue  []ctrlOut // control messages waiting for a descriptor
	ctrlCopy   [bufSize]byte
	lines      lineLimiter
	popped     uint64 // used buffers taken from any queue (HandleIRQ: was it ours?) // a control message, copied out of device memory before it is parsed
	slots      []*slot
	seg        [1]ring.Segment
	stats      DeviceStats
	resetTimes []time.Time
	recovering bool
	// reannounceTimer removes ports not announced again after a reset.
	reannounceTimer *time.Timer
	inControl       bool // handling a control message: replies wait for the re-post
	pendingWork     bool // control work left over: the event loop must not wait
	unmaskDue       bool // INTx taken by HandleIRQ and not unmasked yet
	irqFDs          int  // descriptors IRQFDs handed out
	waker           func()
	closed          bool
	failed          bool
	err             error
	held            int // buffers in use outside the lock
	freed           bool
	done            chan struct{}
	evq             []PortEvent
	evWake          chan struct{}
	events          chan PortEvent
}

type ctrlOut struct {
	id           uint32
	event, value uint16
}

// Open brings up the console device behind fn (spec 3.1.1, VIRTIO-NOTES
// §7.5), announces DEVICE_READY, handles the ports the device announces
// and starts the event loop. Every port is reported on Events, including
// those present when Open returns.
func Open(ctx context.Context, fn Function, cfg Config) (*Device, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	t, err := newTransport(fn, log)
	if err != nil {
		return nil, err
	}
	d := &Device{
		cfg: cfg, log: log, fn: fn, t: t, alloc: fn.DMA(),
		order:     binary.LittleEndian,
		maxResets: cfg.MaxResets,
		done:      make(chan struct{}),
		evWake:    make(chan struct{}, 1),
		events:    make(chan PortEvent, 64),
		fwdDone:   make(chan struct{}),
		loopDone:  make(chan struct{}),
	}
	if t.Legacy() {
		d.order = binary.NativeEndian // spec 5.3.6.3: guest-native
	}
	if d.maxResets <= 0 {
		d.maxResets = defaultMaxResets
	}
	d.mu.Lock()
	err = d.bringUpLocked(true)
	if err != nil {
		if d.queues != nil {
			// Queues were programmed: stop the device before its memory
			// goes, then tell it the driver gave up.
			if rerr := t.Reset(); rerr != nil {
				d.log.Warn("virtio-console: reset after failed bring-up", "err", rerr)
			}
			d.failStatus()
		}
		d.releaseLocked()
		d.mu.Unlock()
		return nil, fmt.Errorf("driver: open: %w", err)
	}
	d.mu.Unlock()
	lctx, cancel := context.WithCancel(context.Background())
	d.loopCancel = cancel
	go d.forward()
	if cfg.ExternalLoop {
		close(d.loopDone)
	} else {
		go d.loop(lctx)
	}
	return d, nil
}

// Multiport reports whether VIRTIO_CONSOLE_F_MULTIPORT was negotiated.
func (d *Device) Multiport() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.multiport
}

// Features returns the negotiated feature bits.
func (d *Device) Features() uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.features
}

// MaxPorts returns the number of port ids served.
func (d *Device) MaxPorts() uint32 { return d.nslots }

// Ports returns the current ports, by id.
func (d *Device) Ports() []*Port {
	d.mu.Lock()
	defer d.mu.Unlock()
	var ps []*Port
	for _, s := range d.slots {
		if s != nil && s.port != nil && !s.port.removed {
			ps = append(ps, s.port)
		}
	}
	return ps
}

// Port returns the live port with id, or nil.
func (d *Device) Port(id uint32) *Port {
	d.mu.Lock()
	defer d.mu.Unlock()
	if id < uint32(len(d.slots)) && d.slots[id] != nil {
		if p := d.slots[id].port; p != nil && !p.removed {
			return p
		}
	}
	return nil
}

// Events returns the channel of port and device events. It is closed when
// the device is closed or fails.
func (d *Device) Events() <-chan PortEvent { return d.events }

// Stats returns the device's counters.
func (d *Device) Stats() DeviceStats {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.stats
}

// Done is closed when the device stops: after Close, or after a failure
// the driver could not recover from.
func (d *Device) Done() <-chan struct{} { return d.done }

// Err returns nil while the device runs; after Done, the fatal error, or
// ErrClosed after Close.
func (d *Device) Err() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.err
}

// KernelName returns the name Linux would give the port's device node,
// "vport<D>p<ID>", for ports the host did not name.
func (p *Port) KernelName() string { return fmt.Sprintf("vport%dp%d", p.d.cfg.Index, p.id) }

// Close tells the host that guest-open ports are closed (PORT_OPEN 0),
// resets the device and frees its memory (once no buffer is in use by a
// reader or writer). It is idempotent.
func (d *Device) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		<-d.loopDone
		return nil
	}
	if !d.failed && d.multiport {
		for _, s := range d.slots {
			if s != nil && s.port != nil && !s.port.removed && s.port.guestOpen && !s.port.reannounce {
				d.sendControlLocked(s.id, eventPortOpen, 0)
			}
		}
		// QEMU handles the control transmitq synchronously on the kick;
		// give a slower device a moment, bounded.
		d.drainControlTxLocked(100 * time.Millisecond)
	}
	d.closed = true
	var err error
	if rerr := d.t.Reset(); rerr != nil && !d.failed {
		err = fmt.Errorf("driver: close: reset: %w", rerr)
	}
	d.stopLocked(ErrClosed)
	d.mu.Unlock()
	d.loopCancel()
	<-d.loopDone
	<-d.fwdDone
	d.mu.Lock()
	d.finishLocked()
	d.mu.Unlock()
	return err
}

// stopLocked marks every port removed, wakes all waiters and closes Done.
func (d *Device) stopLocked(err error) {
	if d.err == nil {
		d.err = err
	}
	if d.reannounceTimer != nil {
		d.reannounceTimer.Stop()
		d.reannounceTimer = nil
	}
	for _, s := range d.slots {
		if s == nil || s.port == nil {
			continue
		}
		p := s.port
		if !p.removed {
			p.removed = true
			p.changedLocked()
			d.emitLocked(p, PortRemoved)
		}
		p.wakeAll()
	}
	select {
	case <-d.done:
	default:
		close(d.done)
	}
	wake(d.evWake)
	d.wakeLoopLocked()
}

// wakeLoopLocked tells an external loop that something changed.
func (d *Device) wakeLoopLocked() {
	if d.waker != nil {
		d.waker()
	}
}

// finishLocked frees all device memory once the device is closed and no
// buffer is in use outside the lock.
func (d *Device) finishLocked() {
	if !d.closed || d.held > 0 || d.freed {
		return
	}
	d.releaseLocked()
}

// releaseLocked frees every allocation. The device must be reset.
func (d *Device) releaseLocked() {
	d.freed = true
	free := func(r dma.Region) {
		if r.Len() > 0 {
			if err := d.alloc.Free(r); err != nil {
				d.log.Warn("virtio-console: free dma memory", "err", err)
			}
		}
	}
	for _, s := range d.slots {
		if s == nil {
			continue
		}
		for _, b := range s.rxBufs {
			free(b.mem)
		}
		for _, b := range s.txBufs {
			free(b.mem)
		}
		s.rxBufs, s.txBufs = nil, nil
	}
	for _, r := range d.ctrlRxBufs {
		free(r)
	}
	d.ctrlRxBufs = nil
	free(d.ctrlTxMem)
	d.ctrlTxMem = dma.Region{}
	for i, q := range d.queues {
		if q != nil {
			if err := q.Close(); err != nil {
				d.log.Warn("virtio-console: free queue", "queue", i, "err", err)
			}
		}
	}
	d.queues = nil
}

// broken reports whether the device can no longer be used.
func (d *Device) broken() bool { return d.closed || d.failed }

// --- bring-up ---

// queueSize chooses the size of a queue the device offers max for.
func queueSize(max uint16, legacy bool) (uint16, error) {
	if max == 0 {
		return 0, nil
	}
	if legacy {
		if max&(max-1) != 0 || max > maxLegacyQueueSize {
			return 0, fmt.Errorf("%w: legacy queue size %d", ErrBadQueue, max)
		}
		return max, nil
	}
	s := min(max, maxQueueSize)
	return uint16(1) << (bits.Len16(s) - 1), nil
}

// bringUpLocked runs device initialisation. The first time it allocates
// queues and control buffers; afterwards (recovery) it reuses them and
// checks that the device still describes itself the same way.
func (d *Device) bringUpLocked(first bool) error {
	t := d.t
	if !first {
		// QEMU drops DRIVER_OK when Bus Master is cleared (VIRTIO-NOTES
		// §12.7); a recovery must not depend on it still being set.
		if err := enableDevice(d.fn.Config(), t.Legacy()); err != nil {
			return fmt.Errorf("enable device: %w", err)
		}
	}
	if err := t.Reset(); err != nil {
		return err
	}
	if err := t.AddStatus(StatusAcknowledge); err != nil {
		return err
	}
	if err := t.AddStatus(StatusDriver); err != nil {
		return err
	}
	// F_SIZE and EMERG_WRITE are taken when offered (negotiateFeatures
	// drops unoffered bits): console sizes, and EmergencyWrite.
	want := FeatureConsoleMultiport | FeatureVersion1 | FeatureEventIdx | FeatureConsoleSize | FeatureConsoleEmergWrite
	var required uint64
	if d.fn.IOMMU() {
		want |= FeatureAccessPlatform
		required |= FeatureAccessPlatform
	}
	feat, err := negotiateFeatures(t, want, required)
	if err != nil {
		return err
	}
	if !first && feat != d.features {
		return fmt.Errorf("features changed across reset: %#x, was %#x", feat, d.features)
	}
	d.features = feat
	d.multiport = feat&FeatureConsoleMultiport != 0
	d.eventIdx = feat&FeatureEventIdx != 0
	d.sizeF = feat&FeatureConsoleSize != 0
	d.emergF = feat&FeatureConsoleEmergWrite != 0

	maxNr := uint32(1)
	if d.multiport {
		var b [4]byte
		if err := t.ReadConfig(4, b[:]); err != nil {
			return fmt.Errorf("read max_nr_ports: %w", err)
		}
		maxNr = d.order.Uint32(b[:])
		if maxNr == 0 {
			d.failStatus()
			return fmt.Errorf("%w: max_nr_ports is 0 with MULTIPORT", ErrDeviceProtocolConsole)
		}
		if maxNr > maxPortsLimit {
			d.log.Warn("virtio-console: max_nr_ports capped", "max_nr_ports", maxNr, "cap", maxPortsLimit)
			maxNr = maxPortsLimit
		}
	}
	if !first && maxNr != d.maxNr {
		return fmt.Errorf("max_nr_ports changed across reset: %d, was %d", maxNr, d.maxNr)
	}
	d.maxNr = maxNr
	nslots := maxNr
	if d.cfg.MaxPorts > 0 && nslots > d.cfg.MaxPorts {
		nslots = d.cfg.MaxPorts
	}
	// Queue numbers are 16-bit: port 0x7fff's transmitq is the last one.
	nslots = min(nslots, maxQueuePorts)
	if first {
		d.nslots = nslots
		if err := d.setupVectors(); err != nil {
			return err
		}
	}
	if err := t.SetConfigVector(d.vecConfig); err != nil {
		return err
	}
	if first {
		if err := d.allocQueuesLocked(); err != nil {
			return err
		}
	}
	for qi, q := range d.queues {
		if q == nil {
			continue
		}
		if !first {
			q.Reset()
		}
		err := t.SetupQueue(uint16(qi), QueueSetup{
			Size: q.Size(), Desc: q.DescAddr(), Driver: q.DriverAddr(), Device: q.DeviceAddr(),
			Vector: d.queueVector(uint16(qi)),
		})
		if err != nil {
			return fmt.Errorf("queue %d: %w", qi, err)
		}
	}
	if !first {
		d.forgetInFlightLocked()
	}
	// Transmit interrupts only while someone waits for buffers (waitTx).
	for _, s := range d.slots {
		if s != nil && s.txWaiters == 0 {
			s.tx.DisableInterrupts()
		}
	}
	kickCtrl := false
	if d.multiport {
		kickCtrl, err = d.fillControlRxLocked()
		if err != nil {
			return err
		}
	}
	if err := t.AddStatus(StatusDriverOK); err != nil {
		return err
	}
	if st, err := t.Status(); err != nil {
		return err
	} else if st&StatusDriverOK == 0 || st&(StatusDeviceNeedsReset|StatusFailed) != 0 {
		return fmt.Errorf("%w: status %#x after DRIVER_OK", ErrDeviceProtocolConsole, st)
	}
	if kickCtrl {
		d.notifyLocked(controlRxQueue)
	}
	if !d.multiport {
		return d.singlePortLocked()
	}
	// VIRTIO-NOTES §7.5 step 3. QEMU answers synchronously with PORT_ADD
	// for every port, which the drain below handles.
	d.sendControlLocked(badPortID, eventDeviceReady, 1)
	// Bounded: a device that answers every answer must not hold bring-up
	// forever; what is left goes to the event loop.
	more, err := d.serviceControlPassesLocked(4*int(d.nslots) + maxControlPasses)
	if err != nil {
		return err
	}
	if more {
		d.pendingWork = true
	}
	if !first {
		d.scheduleUnannouncedDropLocked()
	}
	return nil
}

// reannounceGrace is how long after a reset the driver waits for the device
// to announce a port again before it removes the port. QEMU replays every
// PORT_ADD on DEVICE_READY, but from its main loop when the doorbell goes
// through an ioeventfd (virtio-pci's default), so the replay may arrive
// well after bring-up returns; removing ports at once would replace every
// port (and drop its client) on each reset.
const reannounceGrace = 2 * time.Second

// scheduleUnannouncedDropLocked removes, reannounceGrace from now, the
// ports the device has not announced again since this reset.
func (d *Device) scheduleUnannouncedDropLocked() {
	if d.reannounceTimer != nil {
		d.reannounceTimer.Stop()
		d.reannounceTimer = nil
	}
	pending := false
	for _, s := range d.slots {
		if s != nil && s.port != nil && !s.port.removed && s.port.reannounce {
			pending = true
			break
		}
	}
	if !pending {
		return
	}
	resets := d.stats.Resets
	d.reannounceTimer = time.AfterFunc(reannounceGrace, func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		if d.broken() || d.stats.Resets != resets {
			return // stopped, or a later reset has its own timer
		}
		d.reannounceTimer = nil
		d.dropUnannouncedLocked()
	})
}

// ErrDeviceProtocolConsole is matched by violations of the console protocol
// that stop bring-up (max_nr_ports 0, a device refusing DRIVER_OK).
var ErrDeviceProtocolConsole = errors.New("driver: console device protocol violation")

func (d *Device) failStatus() {
	if err := d.t.AddStatus(StatusFailed); err != nil {
		d.log.Warn("virtio-console: set FAILED", "err", err)
	}
}

// setupVectors picks the MSI-X layout. Vector 0 carries configuration
// changes and the control queues; with n ≥ 2 vectors the data queues of
// port id p are on vector 1 + p mod (n-1): with QEMU's default of two
// vectors every data queue shares vector 1, with more each port (up to
// n-1 of them) has its own, so a wake-up services only the ports whose
// vector fired. With one vector everything is on 0; without MSI-X, none
// (INTx).
func (d *Device) setupVectors() error {
	n := d.fn.IRQ().MSIXVectors()
	if n < 0 || n > 0x800 { // the MSI-X table size field is 11 bits
		return fmt.Errorf("driver: the interrupt source reports %d MSI-X vectors", n)
	}
	d.nvec = n
	d.vecConfig = 0
	if n == 0 {
		d.vecConfig = NoVector
	}
	return nil
}

// queueVector is the MSI-X vector of queue qi (see setupVectors).
func (d *Device) queueVector(qi uint16) uint16 {
	switch {
	case d.nvec == 0:
		return NoVector
	case d.nvec == 1:
		return 0
	}
	var port uint32
	switch {
	case !d.multiport || qi < 2:
		port = 0
	case qi == controlRxQueue || qi == controlTxQueue:
		return d.vecConfig
	default:
		port = uint32(qi)/2 - 1
	}
	return uint16(1 + port%uint32(d.nvec-1))
}

// vectorBit is the bit of vector v in a WaitVectors set.
func vectorBit(v uint16) uint64 { return 1 << min(v, 63) }

// queueCount is the number of queues the driver sets up.
func (d *Device) queueCount() int {
	if !d.multiport {
		return 2
	}
	return 2 * (int(d.nslots) + 1)
}

// allocQueuesLocked creates every queue (all before DRIVER_OK, so
// hot-plugged ports work) and the slots of the ports that have queues.
func (d *Device) allocQueuesLocked() error {
	n := d.queueCount()
	d.queues = make([]virtqueue, n)
	layout := ring.Modern
	if d.t.Legacy() {
		layout = ring.Legacy
	}
	for qi := 0; qi < n; qi++ {
		max, err := d.t.QueueMax(uint16(qi))
		if err != nil && !errors.Is(err, ErrNoQueue) {
			return fmt.Errorf("queue %d: %w", qi, err)
		}
		size, err := queueSize(max, d.t.Legacy())
		if err != nil {
			return fmt.Errorf("queue %d: %w", qi, err)
		}
		if size == 0 {
			if qi < 4 && (qi < 2 || d.multiport) {
				return fmt.Errorf("%w: queue %d does not exist", ErrNoQueue, qi)
			}
			continue
		}
		q, err := ring.New(d.alloc, ring.Config{Size: size, Layout: layout, EventIdx: d.eventIdx})
		if err != nil {
			return fmt.Errorf("queue %d: %w", qi, err)
		}
		d.queues[qi] = q
	}
	d.slots = make([]*slot, d.nslots)
	for id := uint32(0); id < d.nslots; id++ {
		rxq, txq := portQueues(id)
		if int(txq) >= n || d.queues[rxq] == nil || d.queues[txq] == nil {
			continue
		}
		s := &slot{id: id, rxq: rxq, txq: txq, rx: d.queues[rxq], tx: d.queues[txq]}
		s.rxByHead = newHeadMap(int(s.rx.Size()))
		s.txByHead = newHeadMap(int(s.tx.Size()))
		d.slots[id] = s
	}
	if d.multiport {
		if err := d.allocControlLocked(); err != nil {
			return err
		}
	}
	return nil
}

func newHeadMap(n int) []int32 {
	m := make([]int32, n)
	for i := range m {
		m[i] = -1
	}
	return m
}

// portQueues returns the receive and transmit queue of port id (spec 5.3.2).
func portQueues(id uint32) (rx, tx uint16) {
	if id == 0 {
		return 0, 1
	}
	rx = uint16(2 * (id + 1))
	return rx, rx + 1
}

// allocControlLocked allocates the control receive buffers (one page per
// descriptor, filling the queue, as Linux does) and the control transmit
// messages (8 bytes each, in one region).
func (d *Device) allocControlLocked() error {
	rq, tq := d.queues[controlRxQueue], d.queues[controlTxQueue]
	d.ctrlRxHead = newHeadMap(int(rq.Size()))
	for range int(rq.Size()) {
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

// singlePortLocked sets up port 0 of a device without MULTIPORT: a console
// port, open on both sides, with no control traffic (spec 5.3.5).
func (d *Device) singlePortLocked() error {
	s := d.slots[0]
	if s == nil {
		return fmt.Errorf("%w: port 0 queues", ErrNoQueue)
	}
	if err := d.ensureRxLocked(s); err != nil {
		return err
	}
	s.posting = true
	d.postRxLocked(s)
	d.kickRxLocked(s)
	p := s.port
	if p == nil || p.removed {
		p = newPort(d, s)
		s.port = p
		s.gen++
		d.emitLocked(p, PortAdded)
	}
	p.console, p.hostConnected, p.guestOpen, p.reannounce = true, true, true, false
	if d.sizeF {
		d.configSizeLocked()
	}
	return nil
}

// configSizeLocked reads cols and rows from the configuration space (valid
// with F_SIZE, spec 5.3.4) into port 0 of a device without MULTIPORT, as
// Linux does at a configuration change. With MULTIPORT sizes come in
// RESIZE messages and the fields are ignored.
func (d *Device) configSizeLocked() {
	s := d.slots[0]
	if s == nil || s.port == nil || s.port.removed {
		return
	}
	var b [4]byte
	if err := d.t.ReadConfig(0, b[:]); err != nil {
		d.log.Warn("virtio-console: read console size", "err", err)
		return
	}
	cols, rows := d.order.Uint16(b[0:]), d.order.Uint16(b[2:])
	if cols > maxConsoleDim || rows > maxConsoleDim {
		d.violationLocked(fmt.Errorf("%w: config console size %dx%d", ErrDeviceProtocolConsole, cols, rows), s.port)
		return
	}
	d.setSizeLocked(s.port, cols, rows)
}

// setSizeLocked records a console size and reports the change.
func (d *Device) setSizeLocked(p *Port, cols, rows uint16) {
	if cols == p.cols && rows == p.rows {
		return
	}
	p.cols, p.rows = cols, rows
	d.log.Debug("virtio-console: console size", "port", p.id, "cols", cols, "rows", rows)
	p.changedLocked()
	d.emitLocked(p, PortChanged)
}

// ErrNoEmergencyWrite is returned by EmergencyWrite when the device did not
// offer VIRTIO_CONSOLE_F_EMERG_WRITE (QEMU: emergency-write=off, or
// machine types up to 2.7).
var ErrNoEmergencyWrite = errors.New("driver: emergency write not negotiated")

// emergWrOffset is the offset of emerg_wr in the configuration (spec 5.3.4).
const emergWrOffset = 8

// EmergencyWrite writes b through the emerg_wr configuration field
// (VIRTIO_CONSOLE_F_EMERG_WRITE, spec 5.3.5), one 32-bit write per byte.
// It needs no queue, buffer or interrupt, so it works while the ports are
// not up yet and after the device failed (not after Close). QEMU puts each
// byte on the first host-connected console port (a virtconsole, usually
// port 0) and drops it when there is none. A zero byte cannot be expressed
// (the device takes 0 as "nothing written") and is skipped. It returns
// ErrNoEmergencyWrite when the feature was not negotiated.
func (d *Device) EmergencyWrite(b []byte) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case d.closed:
		return ErrClosed
	case !d.emergF:
		return ErrNoEmergencyWrite
	}
	var w [4]byte
	for _, c := range b {
		if c == 0 {
			continue
		}
		d.order.PutUint32(w[:], uint32(c))
		if err := d.t.WriteConfig(emergWrOffset, w[:]); err != nil {
			return fmt.Errorf("driver: emergency write: %w", err)
		}
	}
	return nil
}

// --- buffers ---

// ensureRxLocked allocates the slot's receive buffers the first time the
// port id is announced.
func (d *Device) ensureRxLocked(s *slot) error {
	if s.rxBufs != nil {
		return nil
	}
	n := int(s.rx.Size())
	if d.cfg.RxBuffers > 0 {
		n = min(n, d.cfg.RxBuffers)
	}
	bufs := make([]rxBuf, 0, n)
	for range n {
		r, err := d.alloc.Alloc(bufSize, 8)
		if err != nil {
			for _, b := range bufs {
				_ = d.alloc.Free(b.mem)
			}
			return fmt.Errorf("port %d receive buffers: %w", s.id, err)
		}
		bufs = append(bufs, rxBuf{mem: r})
	}
	s.rxBufs = bufs
	s.fifo = make([]int32, n)
	return nil
}

// ensureTxLocked allocates the slot's transmit buffers at first use.
func (d *Device) ensureTxLocked(s *slot) error {
	if s.txBufs != nil || d.broken() {
		return nil
	}
	n := d.cfg.TxBuffers
	if n <= 0 {
		n = defaultTxBuffers
	}
	n = min(n, int(s.tx.Size()))
	size := d.cfg.TxBufferSize
	if size <= 0 {
		size = defaultTxBufferSize
	}
	bufs := make([]txBuf, 0, n)
	for len(bufs) < n {
		r, err := d.alloc.Alloc(size, 8)
		if err != nil && size > bufSize {
			// No contiguous memory that large (4 KiB pages): start
			// again with page-sized buffers.
			d.log.Info("virtio-console: large transmit buffers unavailable, using 4096 bytes", "port", s.id, "size", size, "err", err)
			for _, b := range bufs {
				_ = d.alloc.Free(b.mem)
			}
			bufs = bufs[:0]
			size = bufSize
			r, err = d.alloc.Alloc(size, 8)
		}
		if err != nil {
			for _, b := range bufs {
				_ = d.alloc.Free(b.mem)
			}
			return fmt.Errorf("port %d transmit buffers: %w", s.id, err)
		}
		bufs = append(bufs, txBuf{mem: r})
	}
	s.txBufs = bufs
	s.txFree = make([]int32, 0, n)
	for i := n - 1; i >= 0; i-- {
		s.txFree = append(s.txFree, int32(i))
	}
	return nil
}

func (d *Device) txReady(s *slot) bool { return s.txBufs != nil && !d.broken() }

// postRxLocked adds every free receive buffer of s to its receiveq (not
// yet published).
func (d *Device) postRxLocked(s *slot) {
	for i := range s.rxBufs {
		if s.rxBufs[i].state == rxFree {
			d.postOneRxLocked(s, int32(i))
		}
	}
}

func (d *Device) postOneRxLocked(s *slot, i int32) {
	b := &s.rxBufs[i]
	d.seg[0] = ring.Segment{Addr: b.mem.Addr(), Len: uint32(b.mem.Len()), Write: true}
	head, err := s.rx.Add(d.seg[:])
	if err != nil {
		b.state = rxFree // the queue is broken or full; recovery re-posts
		return
	}
	s.rxByHead[head] = i
	b.state, b.n, b.off = rxPosted, 0, 0
}

// releaseRxLocked returns a buffer a reader is done with: re-posted if the
// slot's queue is live, free otherwise.
func (d *Device) releaseRxLocked(s *slot, i int32) {
	b := &s.rxBufs[i]
	b.state, b.n, b.off = rxFree, 0, 0
	if s.posting && !d.broken() {
		d.postOneRxLocked(s, i)
	}
}

// kickRxLocked publishes re-posted receive buffers and notifies if needed.
func (d *Device) kickRxLocked(s *slot) {
	if d.broken() || !s.posting {
		return
	}
	if s.rx.Publish() {
		d.notifyLocked(s.rxq)
	}
}

// notifyLocked sends the available-buffer notification for q.
func (d *Device) notifyLocked(q uint16) {
	if d.broken() {
		return
	}
	d.stats.Kicks++
	if err := d.t.Notify(q); err != nil {
		d.log.Warn("virtio-console: notify", "queue", q, "err", err)
	}
}

// forgetInFlightLocked is the buffer side of a reset: posted buffers are
// the driver's again, in-flight transmissions are lost.
func (d *Device) forgetInFlightLocked() {
	for _, s := range d.slots {
		if s == nil {
			continue
		}
		s.posting = false
		for i := range s.rxBufs {
			if s.rxBufs[i].state == rxPosted {
				s.rxBufs[i].state = rxFree
			}
		}
		for h := range s.rxByHead {
			s.rxByHead[h] = -1
		}
		s.gen++
		s.txFree = s.txFree[:0]
		for i := range s.txBufs {
			if !s.txBufs[i].owned {
				s.txFree = append(s.txFree, int32(i))
			}
		}
		for h := range s.txByHead {
			s.txByHead[h] = -1
		}
		s.injectedOut = 0
		if p := s.port; p != nil && !p.removed {
			if p.txInflight > 0 {
				p.txLost = true
			}
			p.txInflight = 0
			if d.multiport {
				p.reannounce = true
				if p.hostConnected {
					p.hostConnected = false
					p.changedLocked()
					d.emitLocked(p, PortChanged)
				}
			}
			p.wakeAll()
		}
	}
	for h := range d.ctrlRxHead {
		d.ctrlRxHead[h] = -1
	}
	d.ctrlTxFree = d.ctrlTxFree[:0]
	for i := len(d.ctrlTxHead) - 1; i >= 0; i-- {
		d.ctrlTxHead[i] = -1
		d.ctrlTxFree = append(d.ctrlTxFree, int32(i))
	}
	d.ctrlQueue = d.ctrlQueue[:0]
}

// dropUnannouncedLocked removes ports the device did not announce again
// after a reset (QEMU replays PORT_ADD synchronously on DEVICE_READY).
func (d *Device) dropUnannouncedLocked() {
	for _, s := range d.slots {
		if s != nil && s.port != nil && !s.port.removed && s.port.reannounce {
			d.infoLocked("virtio-console: port not re-announced after reset", "port", s.id)
			d.removePortLocked(s)
		}
	}
}

// --- events ---

// emitLocked queues a port event for Events.
func (d *Device) emitLocked(p *Port, k PortEventKind) {
	switch {
	case k == PortChanged && p.changeQueued:
		// One change per port waits at a time: it says "look again", and
		// a device toggling a port in a loop cannot grow the queue.
		d.wakeLoopLocked()
		return
	case k == PortChanged && len(d.evq) >= maxEventBacklog:
		d.stats.Dropped++
		d.wakeLoopLocked()
		return
	}
	// PortAdded and PortRemoved are never dropped: a port the agent never
	// heard of would never be published. Their number is bounded by the
	// ports' slots between two reads of the queue.
	if k == PortChanged {
		p.changeQueued = true
	}
	d.evq = append(d.evq, PortEvent{Port: p, Kind: k})
	wake(d.evWake)
	d.wakeLoopLocked()
}

// forward delivers queued port events to Events in order, and closes it
// when the device stops.
func (d *Device) forward() {
	defer close(d.fwdDone)
	defer close(d.events)
	var batch []PortEvent
	for {
		d.mu.Lock()
		batch = append(batch[:0], d.evq...)
		for _, ev := range d.evq {
			if ev.Kind == PortChanged {
				ev.Port.changeQueued = false
			}
		}
		clear(d.evq)
		d.evq = d.evq[:0]
		stopped := d.closed || d.failed
		d.mu.Unlock()
		for _, ev := range batch {
			if stopped {
				// Still deliver what is ready if someone reads, but
				// never block a stopped device.
				select {
				case d.events <- ev:
				default:
				}
				continue
			}
			select {
			case d.events <- ev:
			case <-d.done:
				stopped = true
			}
		}
		if stopped {
			return
		}
		select {
		case <-d.evWake:
		case <-d.done:
		}
	}
}
