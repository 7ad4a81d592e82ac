package driver

// The console device: its configuration, state and counters, Open, and
// what callers ask of it. Bring-up is in bringup.go (queues in queue.go,
// vectors in vectors.go, announcements in announce.go), shutting down in
// shutdown.go, buffers in buffers.go, faults and recovery in fault.go,
// events in events.go, emergency writes in emergency.go.

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vserial/vserial/dma"
	"github.com/vserial/vserial/internal/ratelimit"
	"github.com/vserial/vserial/ring"
)

// Console feature bits (spec 5.3.3) and ring features.
const (
	FeatureConsoleSize       = uint64(1) << 0
	FeatureConsoleMultiport  = uint64(1) << 1
	FeatureConsoleEmergWrite = uint64(1) << 2
	FeatureIndirectDesc      = uint64(1) << 28
	FeatureEventIdx          = uint64(1) << 29
	// FeatureRingPacked is VIRTIO_F_RING_PACKED (spec 6): the packed
	// virtqueue layout. Above bit 31, so modern transport only.
	FeatureRingPacked = uint64(1) << 34
)

// RingLayout is Config.Ring: which virtqueue layout the driver accepts.
type RingLayout uint8

const (
	// RingAuto takes the packed ring when the device offers it (modern
	// transport only), the split ring otherwise.
	RingAuto RingLayout = iota
	// RingSplit never negotiates the packed ring.
	RingSplit
	// RingPacked requires it: bring-up fails if the device does not
	// offer VIRTIO_F_RING_PACKED (or is driven through the legacy
	// interface).
	RingPacked
)

// ParseRingLayout parses "auto", "split" or "packed".
func ParseRingLayout(s string) (RingLayout, error) {
	switch s {
	case "auto":
		return RingAuto, nil
	case "split":
		return RingSplit, nil
	case "packed":
		return RingPacked, nil
	}
	return 0, fmt.Errorf("ring layout %q: want auto, split or packed", s)
}

// String is the name ParseRingLayout takes.
func (l RingLayout) String() string {
	switch l {
	case RingSplit:
		return "split"
	case RingPacked:
		return "packed"
	}
	return "auto"
}

// Queue numbers of the control queues (spec 5.3.2).
const (
	controlRxQueue = 2
	controlTxQueue = 3
)

// maxQueueSize caps the size the driver programs on the modern interface
// (it may lower the device's size, spec 4.1.4.3); legacy sizes are fixed by
// the device and only bounded.
const (
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
	// MaxPorts caps max_nr_ports (0: no cap beyond MaxPorts-1, the last
	// id with queues). Ports with larger ids are ignored with a log line
	// and never acknowledged.
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
	// AnnounceWait bounds how long Open waits for the device's answers to
	// DEVICE_READY when they do not come at once (0: 1 s; negative: no
	// wait; see announceWait).
	AnnounceWait time.Duration
	// CloseFlush bounds Close's wait for the device to take the transmit
	// buffers in flight before it resets the device (0: 2 s; negative: no
	// wait). Whatever is left is counted and logged (undelivered.go).
	CloseFlush time.Duration
	// DMABudget bounds the device memory (rings and buffers) the device
	// may make the driver allocate, in bytes (0: DefaultDMABudget). See
	// budget.go: beyond it ports get fewer buffers, or are capped.
	DMABudget int
	// ExternalLoop: Open starts no event loop of its own. The caller waits
	// for the interrupt itself (IRQFDs) and drives the device through
	// HandleIRQ, Poll, Arm and Disarm (poll.go; package pump does).
	ExternalLoop bool
	// Ring selects the virtqueue layout (default RingAuto: packed when
	// offered on the modern transport).
	Ring   RingLayout
	Logger *slog.Logger
}

// DeviceStats counts what the driver has seen of the device.
type DeviceStats struct {
	Violations     uint64 // device protocol violations (rings and control messages)
	Resets         uint64 // recoveries by device reset
	UnknownControl uint64 // control messages with an unknown or driver-only code
	Dropped        uint64 // port and device events dropped because nobody read Events
	IgnoredPorts   uint64 // PORT_ADD beyond the configured cap
	Discarded      uint64 // host→guest bytes for no live port
	Undelivered    uint64 // guest→host bytes dropped before the device took them (PortStats.Undelivered)
	ControlIn      uint64 // control messages received
	ControlOut     uint64 // control messages sent
	Interrupts     uint64 // wake-ups of the event loop
	// LogsSuppressed counts device-driven log lines held back by the rate
	// limit (ratelog.go).
	LogsSuppressed uint64
	Kicks          uint64 // available-buffer notifications sent (MMIO doorbell writes)
	Unmasks        uint64 // INTx re-enabled after an interrupt (external loop only)
	// VectorFallbacks counts bring-ups repeated with fewer MSI-X vectors
	// because the device refused one.
	VectorFallbacks uint64
	// Injected counts descriptors InjectFault posted; InjectedAccepted
	// those the device used instead of refusing them.
	Injected         uint64
	InjectedAccepted uint64
	// BudgetReduced counts ports given a reduced buffer set, and
	// BudgetRefused ports refused, because of the DMA budget.
	BudgetReduced uint64
	BudgetRefused uint64
}

// Device is a virtio-console device driven by this process.
type Device struct {
	cfg   Config
	log   *slog.Logger
	fn    Function
	t     transport
	alloc dma.Allocator // mem, the function's allocator within the budget
	mem   *dmaBudget
	order binary.ByteOrder // of control messages and config fields

	features  uint64
	multiport bool
	maxNr     uint32 // max_nr_ports as the device reported it (validated)
	nslots    uint32 // port ids served: min(maxNr, caps)
	vecConfig uint16 // configuration changes and the control queues
	nvec      int    // MSI-X vectors routed (0: INTx)
	// vectorsChosen: setupVectors ran (a fallback lowers nvec after it).
	vectorsChosen bool
	eventIdx      bool
	packed        bool // VIRTIO_F_RING_PACKED negotiated: every queue is a ring.Packed
	sizeF         bool // VIRTIO_CONSOLE_F_SIZE negotiated
	emergF        bool // VIRTIO_CONSOLE_F_EMERG_WRITE negotiated
	maxResets     int
	loopCancel    context.CancelFunc
	loopDone      chan struct{}
	fwdDone       chan struct{}

	mu         sync.Mutex
	queues     []virtqueue // by queue number; nil where not set up
	ctrlRxBufs []dma.Region
	ctrlRxHead []int32 // head → index in ctrlRxBufs
	ctrlTxMem  dma.Region
	ctrlTxHead []int32 // head → slot in ctrlTxMem, -1
	ctrlTxFree []int32
	ctrlQueue  []ctrlOut // control messages waiting for a descriptor
	ctrlCopy   [bufSize]byte
	lines      *ratelimit.Gate  // device-driven Info lines (ratelog.go)
	resetCause error            // the fault a recovery answers (salvageLocked)
	now        func() time.Time // the clock (tests set it; nil: time.Now)
	salvaging  bool             // taking used buffers after a reset: no kicks
	ctrlWindow time.Time        // control flood detection (control_queue.go)
	ctrlCount  int
	popped     uint64 // used buffers taken from any queue (HandleIRQ: was it ours?) // a control message, copied out of device memory before it is parsed
	slots      []*slot
	unplanned  int          // slots with queues and no buffer plan yet (budget.go)
	limits     budgetLimits // budget limits reported so far
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
	// closing is set when Close starts (before the device's memory and
	// BARs may go): LastGasp reads it without the lock.
	closing atomic.Bool
	failed  bool
	err     error
	held    int // buffers in use outside the lock
	freed   bool
	done    chan struct{}
	evq     []Event
	evWake  chan struct{}
	events  chan Event
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
	budget := cfg.DMABudget
	switch {
	case budget < 0:
		return nil, fmt.Errorf("driver: open: DMA budget %d bytes is negative", budget)
	case budget == 0:
		budget = DefaultDMABudget
	}
	t, err := newTransport(fn, log)
	if err != nil {
		return nil, err
	}
	mem := newDMABudget(fn.DMA(), budget)
	d := &Device{
		cfg: cfg, log: log, fn: fn, t: t, alloc: mem, mem: mem,
		order:     binary.LittleEndian,
		maxResets: cfg.MaxResets,
		lines:     ratelimit.New(logBurst, logRate),
		done:      make(chan struct{}),
		evWake:    make(chan struct{}, 1),
		events:    make(chan Event, 64),
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
func (d *Device) Events() <-chan Event { return d.events }

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
