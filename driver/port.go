package driver

// Ports: one per port id the device announced. A port's queues, receive
// buffers and transmit buffers belong to its slot (the id), which outlives
// hot-unplug: QEMU keeps the queues of a removed port live, so the receive
// buffers stay posted there and are reused when the id is plugged again.
//
// Data moves with one copy on each side: Recv hands the device's
// receive buffers straight to an io.Writer, Send reads straight into a
// transmit buffer (32 KiB by default, Config.TxBufferSize), and several
// transmit buffers (Config.TxBuffers) are in flight at once. A writer that
// is a BuffersWriter gets every filled receive buffer in one call (writev),
// a reader that is a BuffersReader fills every free transmit buffer in one
// call (readv) while the data streams, and each batch is published with one
// kick. Transmit interrupts are asked for only while a writer waits for a
// buffer or a Flush for the device; receive interrupts stay on, so bytes
// from the host always wake the event loop. Under INTx every interrupt is
// a uio wake-up, an ISR read and a config write, so these matter for
// throughput. Send waits while the host side of a non-console port is
// disconnected, since QEMU discards such bytes. The steady-state data path
// makes no allocations.

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/vserial/vserial/dma"
)

// bufSize is the size of every receive buffer, as in Linux (PAGE_SIZE
// buffers, one descriptor each: QEMU fills one receive buffer per chardev
// read of at most 4096 bytes, so larger ones would not carry more), and of
// transmit buffers when larger ones cannot be allocated.
const bufSize = 4096

// defaultTxBufferSize is the transmit buffer size when Config.TxBufferSize
// is 0: Linux's largest write per descriptor.
const defaultTxBufferSize = 32 << 10

// defaultTxBuffers is how many transmit buffers a port keeps in flight at
// most when Config.TxBuffers is 0.
const defaultTxBuffers = 32

var (
	// ErrPortRemoved is returned by port operations once the device has
	// hot-unplugged the port.
	ErrPortRemoved = errors.New("driver: port removed")
	// ErrClosed is returned once the device has been closed or has failed.
	ErrClosed = errors.New("driver: device closed")
	// ErrDeviceReset is returned by Send, Flush and Write when bytes queued
	// for the device were lost because the device had to be reset (the
	// device may or may not have taken them: the stream is broken).
	ErrDeviceReset = errors.New("driver: device reset, queued bytes lost")
)

// PortStats are a port's counters (the same fields as agent.PortStats).
type PortStats struct {
	BytesIn   uint64 // host → guest, delivered to a reader
	BytesOut  uint64 // guest → host, taken by the device
	Discarded uint64 // host → guest bytes dropped (no reader, port closed, removed)
	// Undelivered counts guest → host bytes read from a client that a
	// device reset, the port's removal or Close dropped before the device
	// took them (undelivered.go).
	Undelivered uint64
	Violations  uint64 // device protocol violations on this port
}

// Receive buffer states.
const (
	rxFree   = iota // driver-owned, not posted
	rxPosted        // in the receiveq
	rxFilled        // returned by the device, waiting for a reader
	rxHeld          // being handed to a reader outside the lock
)

type rxBuf struct {
	mem    dma.Region
	state  uint8
	n, off int // valid bytes and read offset while filled
}

type txBuf struct {
	mem   dma.Region
	gen   uint64 // slot generation when queued
	n     int
	owned bool // being filled by a Send/Write outside the lock
}

// slot is everything that belongs to a port id rather than to one Port
// object. Guarded by Device.mu.
type slot struct {
	id       uint32
	rxq, txq uint16
	rx, tx   virtqueue

	rxBufs   []rxBuf
	rxByHead []int32 // used head → index in rxBufs, -1 if none
	fifo     []int32 // filled buffers in arrival order (circular)
	fHead    int
	fLen     int
	posting  bool // the device announced this id since the last reset
	// rxMoved is when host→guest bytes last moved on the slot: the
	// device filled a receive buffer, or a reader emptied one and it was
	// posted again (salvageLocked: QEMU may have dropped bytes then).
	rxMoved time.Time
	// rxReleased: host→guest bytes moved since the last kick (a reader
	// handed buffers back, or the device filled some); kickRxLocked
	// stamps rxMoved then, with one clock read per batch.
	rxReleased bool

	// plan is the buffer set the DMA budget gave the slot at its first
	// PORT_ADD (planned); txReserved the bytes still reserved for its
	// transmit buffers, allocated at the first send.
	plan       bufPlan
	planned    bool
	txReserved int

	txBufs   []txBuf
	txByHead []int32
	txFree   []int32
	// txWaiters counts writers and flushers waiting for the device to
	// return transmit buffers. Only while there are any does the driver
	// ask for transmit interrupts: otherwise used transmit buffers are
	// reclaimed by the next Send, and the device does not interrupt for
	// each one (every interrupt is a round of exits under INTx).
	txWaiters int
	// injectedOut counts InjectFault descriptors the device has not
	// returned: transmit interrupts stay on for them.
	injectedOut int
	// loopTxWait: an external loop waits for transmit buffers to come
	// back (SendFrom found none free, or TxDrained is not done yet).
	loopTxWait bool
	// rxOff: Disarm turned the receive interrupt off (Arm turns it on);
	// txOn: Arm turned the transmit interrupt on for the loop.
	rxOff, txOn bool
	// rxBatch: an external loop moves this port's receive stream in
	// batches; Arm waits for that many buffers (SetRxBatch).
	rxBatch int
	gen     uint64 // bumped when the port goes away or the device resets

	port *Port
}

// Port is one virtio-console port. Its methods are safe for concurrent use;
// Recv/Read and Send/Write are meant for one reader and one writer each.
type Port struct {
	d  *Device
	s  *slot
	id uint32

	// Guarded by d.mu.
	name          string
	console       bool
	hostConnected bool
	guestOpen     bool
	removed       bool
	reannounce    bool // device reset: waiting for the port to come back
	nameCheck     bool // re-announced: compare the next PORT_NAME
	cols, rows    uint16
	txInflight    int
	txLost        bool
	rxLost        bool // host→guest bytes may have been lost in a reset
	// rxKeep counts the filled buffers (from the head of the FIFO) that
	// arrived before the reset rxLost reports: RecvTo hands them over
	// before the error, bytes after the possible gap only after it.
	rxKeep       int
	stats        PortStats
	changed      chan struct{}
	changeQueued bool // a PortChanged waits in the event queue

	// Scratch for vectored Send and Recv (one sender and one receiver).
	// sendWide: the last Send filled every buffer it had, so the next one
	// offers a BuffersReader every free buffer.
	sendWide bool
	sendIdx  []int32
	sendVec  [][]byte
	recvIdx  []int32
	recvVec  [][]byte

	// Wake-ups, one token each so signalling never allocates. A waiter
	// that finds its condition still true for others passes the token on.
	rxWake, txWake, flushWake chan struct{}
}

func newPort(d *Device, s *slot) *Port {
	return &Port{
		d: d, s: s, id: s.id,
		rxWake:    make(chan struct{}, 1),
		txWake:    make(chan struct{}, 1),
		flushWake: make(chan struct{}, 1),
	}
}

func wake(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

func (p *Port) wakeAll() {
	wake(p.rxWake)
	wake(p.txWake)
	wake(p.flushWake)
}

// changedLocked fires Changed.
func (p *Port) changedLocked() {
	if p.changed != nil {
		close(p.changed)
		p.changed = nil
	}
}

// ID returns the port number on its device.
func (p *Port) ID() uint32 { return p.id }

// Name returns the name the host gave the port, or "" if none (yet).
func (p *Port) Name() string {
	p.d.mu.Lock()
	defer p.d.mu.Unlock()
	return p.name
}

// IsConsole reports whether the device announced the port as a console
// (CONSOLE_PORT), or it is port 0 of a device without MULTIPORT.
func (p *Port) IsConsole() bool {
	p.d.mu.Lock()
	defer p.d.mu.Unlock()
	return p.console
}

// Size returns the console size from the last RESIZE (0, 0 if none).
func (p *Port) Size() (cols, rows uint16) {
	p.d.mu.Lock()
	defer p.d.mu.Unlock()
	return p.cols, p.rows
}

// HostConnected reports whether the host side of the port is connected.
func (p *Port) HostConnected() bool {
	p.d.mu.Lock()
	defer p.d.mu.Unlock()
	return p.hostConnected
}

// GuestOpen reports whether the guest side has the port open.
func (p *Port) GuestOpen() bool {
	p.d.mu.Lock()
	defer p.d.mu.Unlock()
	return p.guestOpen
}

// Removed reports whether the device removed the port (or the device is
// gone).
func (p *Port) Removed() bool {
	p.d.mu.Lock()
	defer p.d.mu.Unlock()
	return p.removed
}

// Changed returns a channel that is closed at the next change of
// HostConnected, Name, console state or size, or when the port is removed.
func (p *Port) Changed() <-chan struct{} {
	p.d.mu.Lock()
	defer p.d.mu.Unlock()
	if p.removed {
		c := make(chan struct{})
		close(c)
		return c
	}
	if p.changed == nil {
		p.changed = make(chan struct{})
	}
	return p.changed
}

// Stats returns the port's counters.
func (p *Port) Stats() PortStats {
	p.d.mu.Lock()
	defer p.d.mu.Unlock()
	return p.stats
}

func (p *Port) String() string { return fmt.Sprintf("port %d", p.id) }

// errLocked returns why the port cannot be used, or nil.
func (p *Port) errLocked() error {
	switch {
	case p.d.closed:
		return ErrClosed
	case p.removed:
		return ErrPortRemoved
	}
	return nil
}

// wait releases the lock, waits for c or ctx, and re-takes the lock.
func (p *Port) wait(ctx context.Context, c chan struct{}) error {
	p.d.mu.Unlock()
	var err error
	select {
	case <-c:
	case <-ctx.Done():
		err = ctx.Err()
	}
	p.d.mu.Lock()
	return err
}

// SetGuestOpen tells the host that a guest program has the port open
// (PORT_OPEN 1) or closed it (PORT_OPEN 0). Closing discards received bytes
// nobody read, as Linux does, and counts them.
func (p *Port) SetGuestOpen(ctx context.Context, open bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	d := p.d
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := p.errLocked(); err != nil {
		return err
	}
	if p.guestOpen == open {
		return nil
	}
	p.guestOpen = open
	if !open {
		p.discardRxLocked()
		// A loss in a reset belonged to the session that ends here.
		p.rxLost, p.rxKeep, p.txLost = false, 0, false
	}
	if d.multiport && !p.reannounce {
		d.sendControlLocked(p.id, ctrlPortOpen, boolValue(open))
		if open && p.s.rxBufs != nil {
			// A notify on the port's receiveq after PORT_OPEN 1: QEMU
			// answers it with guest_writable, which makes its main loop
			// look at the port's chardev again. Without KVM there is no
			// ioeventfd, the PORT_OPEN is handled on the vCPU thread,
			// and a main loop asleep since the port closed may never
			// notice that it can read the host's bytes now (seen once:
			// 128 buffers posted, host bytes waiting, nothing moving for
			// 90 s). A spurious notify is allowed (spec 2.7.13).
			d.notifyLocked(p.s.rxq)
		}
	}
	return nil
}

func boolValue(b bool) uint16 {
	if b {
		return 1
	}
	return 0
}
