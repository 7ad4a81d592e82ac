package driver

// Ports: one per port id the device announced. A port's queues, receive
// buffers and transmit buffers belong to its slot (the id), which outlives
// hot-unplug: QEMU keeps the queues of a removed port live, so the receive
// buffers stay posted there and are reused when the id is plugged again.

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/vserial/vserial/dma"
	"github.com/vserial/vserial/ring"
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
	BytesIn    uint64 // host → guest, delivered to a reader
	BytesOut   uint64 // guest → host, taken by the device
	Discarded  uint64 // host → guest bytes dropped (no reader, port closed, removed)
	Violations uint64 // device protocol violations on this port
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
	gen        uint64 // bumped when the port goes away or the device resets

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
	stats         PortStats
	changed       chan struct{}
	changeQueued  bool // a PortChanged waits in the event queue

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

// waitTx waits, like wait, for the device to return transmit buffers: it
// asks for a transmit interrupt first, and returns at once if buffers came
// back meanwhile (the caller reaps and looks again).
func (p *Port) waitTx(ctx context.Context, c chan struct{}) error {
	s := p.s
	if p.d.broken() || p.removed {
		return p.wait(ctx, c)
	}
	s.txWaiters++
	var err error
	if !s.tx.EnableInterrupts() {
		err = p.wait(ctx, c)
	}
	s.txWaiters--
	if s.txWaiters == 0 && s.injectedOut == 0 && !p.d.broken() {
		s.tx.DisableInterrupts()
	}
	return err
}

// --- host → guest ---

// Recv blocks until host→guest bytes are available, then hands them to w
// straight from the receive buffers (each slice is valid only during its
// Write call) and returns how many bytes w took. Bytes w did not take are
// dropped and counted as discarded. It returns ErrPortRemoved once the
// port is hot-unplugged and ctx.Err() when ctx ends.
func (p *Port) Recv(ctx context.Context, w io.Writer) (int, error) {
	d := p.d
	s := p.s
	d.mu.Lock()
	for {
		if err := p.errLocked(); err != nil {
			d.mu.Unlock()
			return 0, err
		}
		if s.fLen > 0 {
			break
		}
		if err := p.wait(ctx, p.rxWake); err != nil {
			d.mu.Unlock()
			return 0, err
		}
	}
	if vw, ok := w.(BuffersWriter); ok && s.fLen > 1 && s.port == p {
		return p.recvBuffers(vw)
	}
	total := 0
	var werr error
	for s.fLen > 0 && s.port == p && werr == nil && p.errLocked() == nil {
		i := s.fifoPop()
		b := &s.rxBufs[i]
		b.state = rxHeld
		d.held++
		data := b.mem.Bytes()[b.off:b.n]
		d.mu.Unlock()
		n, err := w.Write(data)
		d.mu.Lock()
		d.held--
		n = max(0, min(n, len(data)))
		total += n
		if s.port == p {
			p.stats.BytesIn += uint64(n)
			p.stats.Discarded += uint64(len(data) - n)
		} else {
			d.stats.Discarded += uint64(len(data) - n)
		}
		d.releaseRxLocked(s, i)
		werr = err
		if werr == nil && n < len(data) {
			werr = io.ErrShortWrite
		}
	}
	if s.fLen > 0 {
		wake(p.rxWake) // another reader may take the rest
	}
	d.kickRxLocked(s)
	d.finishLocked()
	d.mu.Unlock()
	return total, werr
}

// recvBuffers is Recv's body for a BuffersWriter: every filled buffer (up to
// maxRecvBuffers) goes to w in one call, and all are re-posted with one
// kick. Called with d.mu held and at least one buffer filled; unlocks.
func (p *Port) recvBuffers(w BuffersWriter) (int, error) {
	d, s := p.d, p.s
	take := p.recvIdx[:0]
	bufs := p.recvVec[:0]
	p.recvIdx, p.recvVec = nil, nil // ours until done
	want := 0
	for s.fLen > 0 && len(take) < maxRecvBuffers {
		i := s.fifoPop()
		b := &s.rxBufs[i]
		b.state = rxHeld
		data := b.mem.Bytes()[b.off:b.n]
		take = append(take, i)
		bufs = append(bufs, data)
		want += len(data)
	}
	d.held++
	d.mu.Unlock()
	n, werr := w.WriteBuffers(bufs)
	d.mu.Lock()
	d.held--
	n = max(0, min(n, want))
	clear(bufs)
	if s.port == p {
		p.stats.BytesIn += uint64(n)
		p.stats.Discarded += uint64(want - n)
	} else {
		d.stats.Discarded += uint64(want - n)
	}
	for _, i := range take {
		d.releaseRxLocked(s, i)
	}
	p.recvIdx, p.recvVec = take, bufs
	if werr == nil && n < want {
		werr = io.ErrShortWrite
	}
	if s.fLen > 0 {
		wake(p.rxWake)
	}
	d.kickRxLocked(s)
	d.finishLocked()
	d.mu.Unlock()
	return n, werr
}

// Read copies host→guest bytes into b, blocking until some are available.
// Unlike Recv it keeps bytes that do not fit for the next call.
func (p *Port) Read(ctx context.Context, b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	d := p.d
	s := p.s
	d.mu.Lock()
	defer d.mu.Unlock()
	for {
		if err := p.errLocked(); err != nil {
			return 0, err
		}
		if s.fLen > 0 {
			break
		}
		if err := p.wait(ctx, p.rxWake); err != nil {
			return 0, err
		}
	}
	total := 0
	for s.fLen > 0 && total < len(b) {
		i := s.fifo[s.fHead]
		rb := &s.rxBufs[i]
		n := copy(b[total:], rb.mem.Bytes()[rb.off:rb.n])
		rb.off += n
		total += n
		p.stats.BytesIn += uint64(n)
		if rb.off == rb.n {
			s.fifoPop()
			d.releaseRxLocked(s, i)
		}
	}
	if s.fLen > 0 {
		wake(p.rxWake)
	}
	d.kickRxLocked(s)
	return total, nil
}

// discardRxLocked drops every filled buffer (counted) and re-posts it.
func (p *Port) discardRxLocked() {
	s := p.s
	for s.fLen > 0 {
		i := s.fifoPop()
		b := &s.rxBufs[i]
		p.stats.Discarded += uint64(b.n - b.off)
		p.d.releaseRxLocked(s, i)
	}
	p.d.kickRxLocked(s)
}

// --- guest → host ---

// canSendLocked reports whether bytes queued now would reach the host.
// QEMU discards guest→host bytes of a virtserialport whose host side is
// not connected (VIRTIO-NOTES §7.8), so the port waits, as Linux's write()
// does; console ports are never held back.
func (p *Port) canSendLocked() bool {
	if p.reannounce {
		return false
	}
	return p.hostConnected || p.console || !p.d.multiport
}

// takeTxLocked waits for a free transmit buffer the port may fill.
func (p *Port) takeTxLocked(ctx context.Context) (int32, error) {
	d, s := p.d, p.s
	if err := d.ensureTxLocked(s); err != nil {
		return -1, err
	}
	for {
		if err := p.errLocked(); err != nil {
			return -1, err
		}
		d.reapTxLocked(s)
		if err := p.errLocked(); err != nil {
			return -1, err
		}
		if p.canSendLocked() && len(s.txFree) > 0 {
			break
		}
		if err := p.waitTx(ctx, p.txWake); err != nil {
			return -1, err
		}
	}
	i := s.txFree[len(s.txFree)-1]
	s.txFree = s.txFree[:len(s.txFree)-1]
	s.txBufs[i].owned = true
	if len(s.txFree) > 0 {
		wake(p.txWake)
	}
	return i, nil
}

// queueTxLocked hands a filled transmit buffer to the device and kicks it
// if needed. It reports false (and frees the buffer, the bytes lost) if the
// port went away or is waiting to be re-announced after a reset. A reset
// that is over by now does not matter: the buffer was never given to the
// device.
func (p *Port) queueTxLocked(i int32, n int) bool {
	ok := p.addTxLocked(i, n)
	p.kickTxLocked()
	return ok
}

// addTxLocked is queueTxLocked without the publish and kick.
func (p *Port) addTxLocked(i int32, n int) bool {
	d, s := p.d, p.s
	b := &s.txBufs[i]
	b.owned = false
	if n <= 0 || s.port != p || p.reannounce || p.errLocked() != nil || d.broken() {
		s.txFree = append(s.txFree, i)
		if n > 0 {
			p.txLost = true
		}
		wake(p.txWake)
		return n <= 0
	}
	d.seg[0] = ring.Segment{Addr: b.mem.Addr(), Len: uint32(n)}
	head, err := s.tx.Add(d.seg[:])
	if err != nil {
		// Cannot happen with one descriptor per buffer and no more
		// buffers than descriptors; treat like a broken queue.
		s.txFree = append(s.txFree, i)
		d.violationLocked(fmt.Errorf("port %d: add tx: %w", s.id, err), p)
		return false
	}
	s.txByHead[head] = i
	b.gen, b.n = s.gen, n
	p.txInflight++
	return true
}

// kickTxLocked publishes the transmit buffers added and notifies the device
// if it asked to be.
func (p *Port) kickTxLocked() {
	d, s := p.d, p.s
	if d.broken() || s.txBufs == nil {
		return
	}
	if s.tx.Publish() {
		d.notifyLocked(s.txq)
	}
}

// BuffersReader is implemented by readers that can fill several buffers
// with one call, in order (readv). Send then fills every free transmit
// buffer, up to maxSendBuffers, with a single call instead of one.
type BuffersReader interface {
	ReadBuffers(bufs [][]byte) (int, error)
}

// BuffersWriter is implemented by writers that can take several buffers
// with one call, in order (writev). Recv then hands over every received
// buffer ready, up to maxRecvBuffers, with a single call.
type BuffersWriter interface {
	WriteBuffers(bufs [][]byte) (int, error)
}

// Bounds on the buffers one Send or Recv call hands to a vectored reader or
// writer (Linux's UIO_MAXIOV is 1024).
const (
	maxSendBuffers = 32
	maxRecvBuffers = 128
)

// Send makes one Read call on r straight into a free transmit buffer
// (waiting while none is free, or while the host side is disconnected) and
// queues what it read for the device; if r is a BuffersReader and the
// previous Send filled what it was given (a stream, not a trickle), that
// one call may fill every free transmit buffer. It returns the bytes read and r's
// error (io.EOF included). Flush waits for the bytes to reach the device.
func (p *Port) Send(ctx context.Context, r io.Reader) (int, error) {
	d := p.d
	s := p.s
	d.mu.Lock()
	if p.txLost {
		// Bytes an earlier Send queued were lost in a device reset: the
		// stream is broken, and the caller must hear it before it hands
		// over more (Flush would say so too, but a stream may never flush).
		p.txLost = false
		d.mu.Unlock()
		return 0, ErrDeviceReset
	}
	i, err := p.takeTxLocked(ctx)
	if err != nil {
		d.mu.Unlock()
		return 0, err
	}
	vr, vec := r.(BuffersReader)
	if !vec || !p.sendWide || len(s.txFree) == 0 {
		// One buffer: the reader has a vectored read, but the last Send
		// did not fill what it was given (a trickle, not a stream).
		buf := s.txBufs[i].mem.Bytes()
		d.held++
		d.mu.Unlock()
		n, rerr := r.Read(buf)
		d.mu.Lock()
		d.held--
		n = max(0, min(n, len(buf)))
		p.sendWide = n == len(buf)
		p.queueTxLocked(i, n)
		d.finishLocked()
		rerr = p.lostLocked(rerr)
		d.mu.Unlock()
		return n, rerr
	}
	// Take every free buffer, without waiting, for one vectored read.
	take := append(p.sendIdx[:0], i)
	p.sendIdx = nil // ours until we are done: a second Send allocates its own
	for len(take) < maxSendBuffers && len(s.txFree) > 0 {
		j := s.txFree[len(s.txFree)-1]
		s.txFree = s.txFree[:len(s.txFree)-1]
		s.txBufs[j].owned = true
		take = append(take, j)
	}
	bufs := p.sendVec[:0]
	p.sendVec = nil
	total := 0
	for _, j := range take {
		b := s.txBufs[j].mem.Bytes()
		bufs = append(bufs, b)
		total += len(b)
	}
	d.held++
	d.mu.Unlock()
	n, rerr := vr.ReadBuffers(bufs)
	d.mu.Lock()
	d.held--
	n = max(0, min(n, total))
	p.sendWide = n == total
	clear(bufs) // no references to device memory outside the lock
	p.addFilledLocked(take, n)
	p.sendIdx, p.sendVec = take, bufs
	p.kickTxLocked()
	d.finishLocked()
	rerr = p.lostLocked(rerr)
	d.mu.Unlock()
	return n, rerr
}

// addFilledLocked queues the transmit buffers take, which a vectored read
// filled in order with n bytes; those it did not reach go back to the free
// list.
func (p *Port) addFilledLocked(take []int32, n int) {
	left := n
	for _, j := range take {
		k := min(left, p.s.txBufs[j].mem.Len())
		left -= k
		p.addTxLocked(j, k)
	}
}

// lostLocked turns a Send's result into ErrDeviceReset when the bytes it
// read could not be queued because the device was being reset.
func (p *Port) lostLocked(err error) error {
	if p.txLost && p.errLocked() == nil {
		p.txLost = false
		return ErrDeviceReset
	}
	return err
}

// Write queues all of b and returns once the device has taken every byte
// (or ctx ends, or the port goes away).
func (p *Port) Write(ctx context.Context, b []byte) (int, error) {
	d := p.d
	d.mu.Lock()
	resets := d.stats.Resets
	done := 0
	for done < len(b) {
		i, err := p.takeTxLocked(ctx)
		if err != nil {
			d.mu.Unlock()
			return done, err
		}
		n := copy(p.s.txBufs[i].mem.Bytes(), b[done:])
		if !p.queueTxLocked(i, n) {
			err := p.errLocked()
			if err == nil {
				err = ErrDeviceReset
			}
			d.mu.Unlock()
			return done, err
		}
		done += n
	}
	err := p.flushLocked(ctx, resets)
	d.mu.Unlock()
	return done, err
}

// Flush waits until the device has taken every byte queued by Send.
func (p *Port) Flush(ctx context.Context) error {
	p.d.mu.Lock()
	defer p.d.mu.Unlock()
	return p.flushLocked(ctx, 0)
}

// flushLocked waits for every queued byte. Bytes lost in a device reset
// are reported (once) if the reset came after resets, the device's reset
// count when the caller queued its bytes (Write reports only its own).
func (p *Port) flushLocked(ctx context.Context, resets uint64) error {
	d := p.d
	for {
		if d.txReady(p.s) {
			d.reapTxLocked(p.s)
		}
		if p.txLost && d.stats.Resets > resets {
			p.txLost = false
			return ErrDeviceReset
		}
		if err := p.errLocked(); err != nil {
			return err
		}
		if p.txInflight == 0 {
			wake(p.flushWake) // pass on to another flusher
			return nil
		}
		if err := p.waitTx(ctx, p.flushWake); err != nil {
			return err
		}
	}
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
	}
	if d.multiport && !p.reannounce {
		d.sendControlLocked(p.id, eventPortOpen, boolValue(open))
	}
	return nil
}

func boolValue(b bool) uint16 {
	if b {
		return 1
	}
	return 0
}

// --- slot helpers (d.mu held) ---

func (s *slot) fifoPush(i int32) {
	s.fifo[(s.fHead+s.fLen)%len(s.fifo)] = i
	s.fLen++
}

func (s *slot) fifoPop() int32 {
	i := s.fifo[s.fHead]
	s.fHead = (s.fHead + 1) % len(s.fifo)
	s.fLen--
	return i
}
