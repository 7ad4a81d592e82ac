// Package ringtest plays the device side of a virtqueue over the same memory
// as a ring.Queue (Device) or a ring.Packed (Packed), with the same atomics,
// for tests. It can be told to misbehave in each way a hostile or broken
// device could. Production code never imports it (layering_test.go).
package ringtest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/vserial/vserial/ring"
	"github.com/vserial/vserial/ring/internal/shm"
)

// Memory resolves device addresses; *dmatest.Heap implements it.
type Memory interface {
	Resolve(addr uint64, n int) ([]byte, error)
}

// Config describes the queue the device serves; it mirrors ring.Config.
// The driver and device areas must be laid out as ring.New lays them out: 4-byte
// aligned, with the 2 padding bytes after each ring that complete the 32-bit
// words holding used_event and avail_event.
type Config struct {
	Size     uint16
	Layout   ring.Layout
	EventIdx bool // negotiated: honour used_event, publish avail_event
	Indirect bool // negotiated: accept indirect descriptors
	// Desc, Driver and Device are the three area addresses (for the legacy
	// layout only Desc is used, as QUEUE_PFN << 12).
	Desc, Driver, Device uint64
	// SkipData, when set, makes Pop validate chains without resolving the
	// segments' bytes (Buf.Data is nil). For benchmarks of the ring alone.
	SkipData bool
}

// Areas is what ConfigFor needs of a driver queue (ring.Queue or
// ring.Packed): its three addresses.
type Areas interface {
	DescAddr() uint64
	DriverAddr() uint64
	DeviceAddr() uint64
}

// ConfigFor returns the device Config matching a driver queue.
func ConfigFor(q Areas, cfg ring.Config) Config {
	return Config{
		Size: cfg.Size, Layout: cfg.Layout, EventIdx: cfg.EventIdx, Indirect: cfg.Indirect > 0,
		Desc: q.DescAddr(), Driver: q.DriverAddr(), Device: q.DeviceAddr(),
	}
}

// Buf is one resolved segment of a chain.
type Buf struct {
	Addr  uint64
	Len   uint32
	Write bool
	Data  []byte // the segment's bytes in memory (len == Len)
}

// Chain is an available chain popped by the device.
type Chain struct {
	Head uint16
	Bufs []Buf
}

// Writable returns the total length of the chain's device-writable buffers.
func (c Chain) Writable() uint32 {
	var n uint32
	for _, b := range c.Bufs {
		if b.Write {
			n += b.Len
		}
	}
	return n
}

// Misbehaviour switches; each makes the device break one rule.
//
// BadID, Duplicate, LongLen and IdxJump apply to the next Push only and are
// then cleared. NeverInterrupt and DelayPublish stay on until a later
// Misbehave turns them off. Duplicate writes, after the entry for the pushed
// head, a second entry for the head pushed before it.
type Misbehaviour struct {
	BadID          bool   // next Push writes an id >= queue size
	Duplicate      bool   // next Push completes the previous head a second time
	LongLen        uint32 // next Push adds this much to the used length
	IdxJump        uint16 // next Push advances used.idx by this much extra
	NeverInterrupt bool   // Push never asks for an interrupt
	DelayPublish   bool   // Push writes used entries but holds the idx until Flush
}

// ErrDescriptor is matched by every error Pop returns for a malformed chain;
// a real device would set DEVICE_NEEDS_RESET.
var ErrDescriptor = errors.New("ringtest: bad descriptor chain")

// Device is the device side of one queue.
//
// A Device is used by one goroutine (the "device" goroutine), which may be
// different from the driver's; all hand-offs with the driver go through the
// 32-bit index atomics. Kick, Kicks and Kicked may be called from any
// goroutine.
type Device struct {
	cfg  Config
	mem  Memory
	desc []byte
	// avail is written by the driver only; used by the device only.
	avail, used []byte

	mask          uint16
	usedEventWord int
	usedEventHigh bool
	availEventOff int

	lastAvail uint16 // next avail slot to consume
	usedIdx   uint16 // used.idx last published
	held      uint16 // used entries written past usedIdx, not yet published
	usedFlags uint16
	notify    bool
	prev      uint16
	hasPrev   bool
	mis       Misbehaviour

	kicker
}

// New attaches a device to the queue memory described by cfg.
func New(mem Memory, cfg Config) (*Device, error) {
	n := int(cfg.Size)
	if n == 0 || n > 32768 || n&(n-1) != 0 {
		return nil, fmt.Errorf("ringtest: new: queue size %d is not a power of two in 1..32768", cfg.Size)
	}
	if !shm.LittleEndian() {
		return nil, errors.New("ringtest: new: big-endian hosts are not supported")
	}
	if cfg.Layout == ring.PackedRing {
		return nil, errors.New("ringtest: new: a packed ring is served by NewPacked")
	}
	availSize, usedSize := 6+2*n+2, 6+8*n+2
	driver, device := cfg.Driver, cfg.Device
	if cfg.Layout == ring.Legacy {
		driver = cfg.Desc + uint64(16*n)
		device = cfg.Desc + uint64((16*n+6+2*n+4095)&^4095)
	}
	d := &Device{cfg: cfg, mem: mem, mask: uint16(n - 1), notify: true, kicker: newKicker()}
	var err error
	if d.desc, err = mem.Resolve(cfg.Desc, 16*n); err != nil {
		return nil, fmt.Errorf("ringtest: new: descriptor table: %w", err)
	}
	if d.avail, err = mem.Resolve(driver, availSize); err != nil {
		return nil, fmt.Errorf("ringtest: new: driver area: %w", err)
	}
	if d.used, err = mem.Resolve(device, usedSize); err != nil {
		return nil, fmt.Errorf("ringtest: new: device area: %w", err)
	}
	if !shm.Aligned4(d.avail) || !shm.Aligned4(d.used) {
		return nil, errors.New("ringtest: new: driver or device area not 4-byte aligned")
	}
	ue := 4 + 2*n
	d.usedEventWord, d.usedEventHigh = ue&^3, ue&3 != 0
	d.availEventOff = 4 + 8*n
	return d, nil
}

func (d *Device) fail(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrDescriptor}, args...)...)
}

// Pop takes the next available chain, if any. Descriptor errors (address that
// does not resolve, loop, bad indirect table) are returned as errors, as a
// real device would flag DEVICE_NEEDS_RESET.
func (d *Device) Pop() (c Chain, ok bool, err error) { return d.PopAppend(nil) }

// PopAppend is Pop with the chain's buffers appended to dst, so that a caller
// reusing dst[:0] pops without allocating.
func (d *Device) PopAppend(dst []Buf) (c Chain, ok bool, err error) {
	// Acquire load of avail flags|idx; pairs with the driver's release store
	// (spec 2.7.13.3; QEMU vring_avail_idx then smp_rmb).
	idx := uint16(shm.Load32(d.avail, 0) >> 16)
	n := idx - d.lastAvail
	if n == 0 {
		return Chain{}, false, nil
	}
	if n > d.cfg.Size {
		return Chain{}, false, d.fail("avail idx %d is %d ahead of the last consumed, more than the queue size", idx, n)
	}
	head := d.availEntry(d.lastAvail & d.mask)
	d.lastAvail++
	if d.cfg.EventIdx && d.notify {
		// QEMU virtqueue_pop: keep avail_event at the next index we will
		// read so the driver kicks when it publishes past it.
		shm.Store32(d.used, d.availEventOff, uint32(d.lastAvail))
	}
	c = Chain{Head: head, Bufs: dst}
	if err := d.walk(&c); err != nil {
		return Chain{}, false, err
	}
	return c, true, nil
}

// availEntry reads avail.ring[slot]. The entry is driver-written memory read
// after the avail idx load. With N == 1 the entry shares its 32-bit word with
// used_event, which the driver stores atomically, so it is loaded atomically
// too; otherwise a plain load keeps the neighbouring slot, which the driver
// may be filling, out of the access.
func (d *Device) availEntry(slot uint16) uint16 {
	off := 4 + 2*int(slot)
	if d.usedEventHigh {
		return uint16(shm.Load32(d.avail, 4))
	}
	return binary.LittleEndian.Uint16(d.avail[off : off+2])
}

func (d *Device) walk(c *Chain) error {
	table, tableN := d.desc, int(d.cfg.Size)
	idx := int(c.Head)
	count, inIndirect, sawWrite := 0, false, false
	total := 0
	for {
		if idx >= tableN {
			return d.fail("head %d: next %d out of range (table of %d)", c.Head, idx, tableN)
		}
		count++
		total++
		if count > tableN || total > int(d.cfg.Size) {
			return d.fail("head %d: chain loops or is longer than the queue size", c.Head)
		}
		e := table[idx*16 : idx*16+16]
		addr := binary.LittleEndian.Uint64(e[0:])
		n := binary.LittleEndian.Uint32(e[8:])
		flags := binary.LittleEndian.Uint16(e[12:])
		next := binary.LittleEndian.Uint16(e[14:])
		if flags&4 != 0 {
			// Spec 2.7.5.3.2.
			switch {
			case !d.cfg.Indirect:
				return d.fail("head %d: indirect descriptor without VIRTIO_F_INDIRECT_DESC", c.Head)
			case inIndirect:
				return d.fail("head %d: indirect descriptor inside an indirect table", c.Head)
			case flags&1 != 0:
				return d.fail("head %d: indirect descriptor with NEXT", c.Head)
			case n == 0 || n%16 != 0:
				return d.fail("head %d: indirect table length %d is not a positive multiple of 16", c.Head, n)
			case int(n/16) > int(d.cfg.Size):
				return d.fail("head %d: indirect table of %d entries is longer than the queue", c.Head, n/16)
			}
			t, err := d.mem.Resolve(addr, int(n))
			if err != nil {
				return d.fail("head %d: indirect table: %v", c.Head, err)
			}
			table, tableN, idx, count, inIndirect = t, int(n/16), 0, 0, true
			total-- // the pointing descriptor is not a buffer
			continue
		}
		if n == 0 {
			// QEMU virtqueue_map_desc: "zero sized buffers are not allowed".
			return d.fail("head %d: zero-length buffer", c.Head)
		}
		write := flags&2 != 0
		if !write && sawWrite {
			return d.fail("head %d: device-readable descriptor after a device-writable one", c.Head)
		}
		sawWrite = sawWrite || write
		var data []byte
		if !d.cfg.SkipData {
			var err error
			if data, err = d.mem.Resolve(addr, int(n)); err != nil {
				return d.fail("head %d: buffer: %v", c.Head, err)
			}
		}
		if len(c.Bufs) == cap(c.Bufs) {
			c.Bufs = append(c.Bufs, Buf{})
		} else {
			c.Bufs = c.Bufs[:len(c.Bufs)+1]
		}
		b := &c.Bufs[len(c.Bufs)-1]
		b.Addr, b.Len, b.Write, b.Data = addr, n, write, data
		if flags&1 == 0 {
			return nil
		}
		idx = int(next)
	}
}

// Push returns a chain to the driver with written bytes and reports whether
// the driver asked for an interrupt (used_event / NO_INTERRUPT).
func (d *Device) Push(head uint16, written uint32) (interrupt bool) {
	m := d.mis
	d.mis.BadID, d.mis.Duplicate, d.mis.LongLen, d.mis.IdxJump = false, false, 0, 0
	id := uint32(head)
	if m.BadID {
		id += uint32(d.cfg.Size)
	}
	n := written + m.LongLen
	if n < written {
		n = ^uint32(0)
	}
	d.putUsed(id, n)
	if m.Duplicate && d.hasPrev {
		d.putUsed(uint32(d.prev), written)
	}
	d.prev, d.hasPrev = head, true
	d.held += m.IdxJump
	if m.DelayPublish {
		return false
	}
	return d.publish()
}

// PushN returns several chains with one used.idx update (like a device
// batching completions) and reports whether the driver asked for an
// interrupt. Misbehaviour switches apply to the first entry.
func (d *Device) PushN(used []ring.Used) (interrupt bool) {
	if len(used) == 0 {
		return false
	}
	delay := d.mis.DelayPublish
	d.mis.DelayPublish = true
	d.Push(used[0].Head, used[0].Len)
	for _, u := range used[1:] {
		d.Push(u.Head, u.Len)
	}
	d.mis.DelayPublish = delay
	if delay {
		return false
	}
	return d.publish()
}

// putUsed writes a used entry at the next unpublished slot. The entry is
// device-written memory the driver reads only after the idx store.
func (d *Device) putUsed(id, n uint32) {
	slot := int((d.usedIdx + d.held) & d.mask)
	e := d.used[4+8*slot : 12+8*slot]
	binary.LittleEndian.PutUint32(e[0:], id)
	binary.LittleEndian.PutUint32(e[4:], n)
	d.held++
}

func (d *Device) publish() bool {
	old := d.usedIdx
	d.usedIdx += d.held
	d.held = 0
	// Release store of used flags|idx: entries before index (spec 2.7.8.2;
	// QEMU virtqueue_flush smp_wmb then vring_used_idx_set). Seq-cst, so it
	// is also the full barrier before reading the driver's suppression word
	// (QEMU virtio_should_notify smp_mb).
	shm.Store32(d.used, 0, uint32(d.usedFlags)|uint32(d.usedIdx)<<16)
	if d.mis.NeverInterrupt || d.usedIdx == old {
		return false
	}
	if d.cfg.EventIdx {
		return needEvent(d.usedEvent(), d.usedIdx, old)
	}
	return shm.Load32(d.avail, 0)&1 == 0
}

func (d *Device) usedEvent() uint16 {
	w := shm.Load32(d.avail, d.usedEventWord)
	if d.usedEventHigh {
		return uint16(w >> 16)
	}
	return uint16(w)
}

func needEvent(event, new, old uint16) bool { return new-event-1 < new-old }

// Flush publishes used entries held back by DelayPublish.
func (d *Device) Flush() (interrupt bool) {
	if d.held == 0 {
		return false
	}
	return d.publish()
}

// SetNotify tells the driver whether to kick (used.flags NO_NOTIFY, or
// avail_event = next avail index when EventIdx). After enabling, check
// Pending: a chain published before the driver saw the request gets no kick.
func (d *Device) SetNotify(enabled bool) {
	d.notify = enabled
	if d.cfg.EventIdx {
		ev := d.lastAvail
		if !enabled {
			ev-- // reached again only after a full 2^16 wrap
		}
		shm.Store32(d.used, d.availEventOff, uint32(ev))
		return
	}
	d.usedFlags = 0
	if !enabled {
		d.usedFlags = 1
	}
	shm.Store32(d.used, 0, uint32(d.usedFlags)|uint32(d.usedIdx)<<16)
}

// Misbehave arms misbehaviour switches, replacing those armed before.
func (d *Device) Misbehave(m Misbehaviour) { d.mis = m }

// Pending reports how many chains are available and not yet popped.
func (d *Device) Pending() int {
	return int(uint16(shm.Load32(d.avail, 0)>>16) - d.lastAvail)
}

// kicker records driver notifications for either device type.
type kicker struct {
	kicks  atomic.Uint64
	kicked chan struct{}
}

func newKicker() kicker { return kicker{kicked: make(chan struct{}, 1)} }

// Kick records a driver notification; safe from any goroutine.
func (k *kicker) Kick() {
	k.kicks.Add(1)
	select {
	case k.kicked <- struct{}{}:
	default:
	}
}

// Kicks returns how many times Kick was called.
func (k *kicker) Kicks() uint64 { return k.kicks.Load() }

// Kicked returns a channel that receives after Kick (coalesced).
func (k *kicker) Kicked() <-chan struct{} { return k.kicked }

// UsedIdx returns the used index last published, and LastAvail the next
// avail index the device will consume.
func (d *Device) UsedIdx() uint16   { return d.usedIdx }
func (d *Device) LastAvail() uint16 { return d.lastAvail }

// AvailFlags and UsedEvent return the driver's suppression words as the
// device sees them now.
func (d *Device) AvailFlags() uint16 { return uint16(shm.Load32(d.avail, 0)) }
func (d *Device) UsedEvent() uint16  { return d.usedEvent() }
