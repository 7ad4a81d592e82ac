package ringtest

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/vserial/vserial/ring"
	"github.com/vserial/vserial/ring/internal/shm"
)

// Queue is the device side of one virtqueue, split (*Device) or packed
// (*Packed). The fake PCI function and the console model use it so that
// they serve either layout.
type Queue interface {
	Pop() (Chain, bool, error)
	PopAppend(dst []Buf) (Chain, bool, error)
	Push(head uint16, written uint32) (interrupt bool)
	PushN(used []ring.Used) (interrupt bool)
	Flush() (interrupt bool)
	SetNotify(enabled bool)
	Misbehave(m Misbehaviour)
	Pending() int
	Kick()
	Kicks() uint64
	Kicked() <-chan struct{}
	UsedIdx() uint16
	LastAvail() uint16
	AvailFlags() uint16
	UsedEvent() uint16
}

var (
	_ Queue = (*Device)(nil)
	_ Queue = (*Packed)(nil)
)

// NewQueue attaches the device side matching cfg.Layout: a *Packed for
// ring.PackedRing, a *Device otherwise.
func NewQueue(mem Memory, cfg Config) (Queue, error) {
	if cfg.Layout == ring.PackedRing {
		return NewPacked(mem, cfg)
	}
	return New(mem, cfg)
}

// Packed descriptor and event suppression bits (spec 2.8.1, 2.8.14).
const (
	pFNext     = 1
	pFWrite    = 2
	pFIndirect = 4
	pFAvail    = 1 << 7
	pFUsed     = 1 << 15
	evEnable   = 0
	evDisable  = 1
	evDesc     = 2
	evWrap     = 1 << 15
)

// heldUsed is a used element written but not yet made visible: its flags
// word is stored at publish.
type heldUsed struct {
	off  int
	word uint32
}

// Packed is the device side of one packed virtqueue (spec 2.8), with the
// same misbehaviour switches as Device. For the packed ring IdxJump means
// "write this many extra used elements repeating the id", the packed
// counterpart of a used index running past what was made available.
//
// Like Device it is used by one goroutine; Kick, Kicks and Kicked may be
// called from any.
type Packed struct {
	cfg              Config
	mem              Memory
	desc             []byte
	drvEvent, devEvt []byte // driver event (driver writes), device event (device writes)

	nextAvail uint16
	availWrap bool
	nextUsed  uint16
	usedWrap  bool
	ndesc     []uint16 // ring descriptors per id in flight at the device; 0 if not
	held      []heldUsed
	heldSlots uint16 // slots the held elements advance nextUsed by
	notify    bool
	prev      uint16
	hasPrev   bool
	mis       Misbehaviour

	kicker
}

// NewPacked attaches a packed-ring device to the memory described by cfg:
// Desc is the descriptor ring, Driver and Device the 4-byte event
// suppression structures (spec 2.8.10).
func NewPacked(mem Memory, cfg Config) (*Packed, error) {
	n := int(cfg.Size)
	if n == 0 || n > 32768 {
		return nil, fmt.Errorf("ringtest: new packed: queue size %d is not in 1..32768", cfg.Size)
	}
	if !shm.LittleEndian() {
		return nil, errors.New("ringtest: new packed: big-endian hosts are not supported")
	}
	d := &Packed{cfg: cfg, mem: mem, availWrap: true, usedWrap: true, notify: true,
		ndesc: make([]uint16, n), kicker: newKicker()}
	var err error
	if d.desc, err = mem.Resolve(cfg.Desc, 16*n); err != nil {
		return nil, fmt.Errorf("ringtest: new packed: descriptor ring: %w", err)
	}
	if d.drvEvent, err = mem.Resolve(cfg.Driver, 4); err != nil {
		return nil, fmt.Errorf("ringtest: new packed: driver event suppression: %w", err)
	}
	if d.devEvt, err = mem.Resolve(cfg.Device, 4); err != nil {
		return nil, fmt.Errorf("ringtest: new packed: device event suppression: %w", err)
	}
	if !shm.Aligned4(d.desc) || !shm.Aligned4(d.drvEvent) || !shm.Aligned4(d.devEvt) {
		return nil, errors.New("ringtest: new packed: descriptor ring or event structure not 4-byte aligned")
	}
	return d, nil
}

func (d *Packed) fail(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrDescriptor}, args...)...)
}

// avail reports whether the descriptor at slot is available in the lap
// with wrap counter w (AVAIL = w, USED = !w). The flags word is loaded
// atomically: it pairs with the driver's release store (spec 2.8.21; QEMU
// vring_packed_desc_read_flags then smp_rmb).
func (d *Packed) avail(slot uint16, w bool) (word uint32, ok bool) {
	word = shm.Load32(d.desc, int(slot)*16+12)
	f := uint16(word >> 16)
	return word, (f&pFAvail != 0) == w && (f&pFUsed != 0) != w
}

func (d *Packed) step(slot uint16, w bool) (uint16, bool) {
	slot++
	if slot == d.cfg.Size {
		return 0, !w
	}
	return slot, w
}

// Pop takes the next available chain, if any.
func (d *Packed) Pop() (Chain, bool, error) { return d.PopAppend(nil) }

// PopAppend is Pop with the chain's buffers appended to dst.
func (d *Packed) PopAppend(dst []Buf) (c Chain, ok bool, err error) {
	if _, ok := d.avail(d.nextAvail, d.availWrap); !ok {
		return Chain{}, false, nil
	}
	c = Chain{Bufs: dst}
	slot, w := d.nextAvail, d.availWrap
	sawWrite := false
	var n uint16
	for {
		if n == d.cfg.Size {
			return Chain{}, false, d.fail("chain at slot %d is longer than the queue", d.nextAvail)
		}
		word, ok := d.avail(slot, w)
		if !ok {
			return Chain{}, false, d.fail("slot %d: chain continues into a descriptor not made available", slot)
		}
		n++
		e := d.desc[int(slot)*16 : int(slot)*16+16]
		addr := binary.LittleEndian.Uint64(e[0:])
		ln := binary.LittleEndian.Uint32(e[8:])
		flags := uint16(word >> 16)
		c.Head = uint16(word) // the id in the last descriptor counts (spec 2.8.6)
		if flags&pFIndirect != 0 {
			if err := d.indirect(&c, slot, addr, ln, flags, n); err != nil {
				return Chain{}, false, err
			}
		} else {
			if err := d.appendBuf(&c, &sawWrite, addr, ln, flags&pFWrite != 0); err != nil {
				return Chain{}, false, err
			}
		}
		slot, w = d.step(slot, w)
		if flags&pFNext == 0 {
			break
		}
	}
	if c.Head >= d.cfg.Size {
		return Chain{}, false, d.fail("buffer id %d out of range", c.Head)
	}
	if d.ndesc[c.Head] != 0 {
		return Chain{}, false, d.fail("buffer id %d made available while in flight", c.Head)
	}
	d.ndesc[c.Head] = n
	d.nextAvail, d.availWrap = slot, w
	if d.cfg.EventIdx && d.notify {
		// Keep the device event at the next descriptor we will read, as
		// Device keeps avail_event at the next avail index.
		d.storeDevEvent(evDesc, d.nextAvail, d.availWrap)
	}
	return c, true, nil
}

// indirect follows an indirect descriptor (spec 2.8.19): a lone descriptor
// pointing at a table of consecutive descriptors.
func (d *Packed) indirect(c *Chain, slot uint16, addr uint64, n uint32, flags, count uint16) error {
	switch {
	case !d.cfg.Indirect:
		return d.fail("slot %d: indirect descriptor without VIRTIO_F_INDIRECT_DESC", slot)
	case flags&pFNext != 0 || count != 1:
		return d.fail("slot %d: indirect descriptor in a chain", slot)
	case n == 0 || n%16 != 0:
		return d.fail("slot %d: indirect table length %d is not a positive multiple of 16", slot, n)
	case int(n/16) > int(d.cfg.Size):
		return d.fail("slot %d: indirect table of %d entries is longer than the queue", slot, n/16)
	}
	t, err := d.mem.Resolve(addr, int(n))
	if err != nil {
		return d.fail("slot %d: indirect table: %v", slot, err)
	}
	sawWrite := false
	for i := 0; i < int(n/16); i++ {
		e := t[i*16 : i*16+16]
		f := binary.LittleEndian.Uint16(e[14:])
		if f&pFIndirect != 0 {
			return d.fail("slot %d: indirect descriptor inside an indirect table", slot)
		}
		if err := d.appendBuf(c, &sawWrite, binary.LittleEndian.Uint64(e[0:]), binary.LittleEndian.Uint32(e[8:]), f&pFWrite != 0); err != nil {
			return err
		}
	}
	return nil
}

func (d *Packed) appendBuf(c *Chain, sawWrite *bool, addr uint64, n uint32, write bool) error {
	if n == 0 {
		return d.fail("zero-length buffer")
	}
	if !write && *sawWrite {
		return d.fail("device-readable descriptor after a device-writable one")
	}
	*sawWrite = *sawWrite || write
	var data []byte
	if !d.cfg.SkipData {
		var err error
		if data, err = d.mem.Resolve(addr, int(n)); err != nil {
			return d.fail("buffer: %v", err)
		}
	}
	c.Bufs = append(c.Bufs, Buf{Addr: addr, Len: n, Write: write, Data: data})
	return nil
}

// Push returns a chain to the driver and reports whether the driver asked
// for an interrupt.
func (d *Packed) Push(head uint16, written uint32) (interrupt bool) {
	m := d.mis
	d.mis.BadID, d.mis.Duplicate, d.mis.LongLen, d.mis.IdxJump = false, false, 0, 0
	id := head
	if m.BadID {
		id += d.cfg.Size
	}
	n := written + m.LongLen
	if n < written {
		n = ^uint32(0)
	}
	d.putUsed(id, n)
	if m.Duplicate && d.hasPrev {
		d.putUsed(d.prev, written)
	}
	for range m.IdxJump {
		d.putUsed(head, written)
	}
	d.prev, d.hasPrev = head, true
	if m.DelayPublish {
		return false
	}
	return d.publish()
}

// PushN returns several chains with one publication (the first element's
// flags written last, as QEMU virtqueue_packed_flush does).
func (d *Packed) PushN(used []ring.Used) (interrupt bool) {
	if len(used) == 0 {
		return false
	}
	delay := d.mis.DelayPublish
	d.mis.DelayPublish = true
	for _, u := range used {
		d.Push(u.Head, u.Len)
	}
	d.mis.DelayPublish = delay
	if delay {
		return false
	}
	return d.publish()
}

// putUsed writes a used element at the next used slot (spec 2.8.9): len
// now, the id|flags word at publish. The element skips the chain's other
// descriptors.
func (d *Packed) putUsed(id uint16, n uint32) {
	slot := int(d.nextUsed) + int(d.heldSlots)
	w := d.usedWrap
	for slot >= int(d.cfg.Size) {
		slot -= int(d.cfg.Size)
		w = !w
	}
	off := slot * 16
	binary.LittleEndian.PutUint32(d.desc[off+8:], n)
	flags := uint16(pFWrite)
	if w {
		flags |= pFAvail | pFUsed
	}
	d.held = append(d.held, heldUsed{off: off + 12, word: uint32(id) | uint32(flags)<<16})
	step := uint16(1)
	if id < d.cfg.Size && d.ndesc[id] != 0 {
		step = d.ndesc[id]
		d.ndesc[id] = 0
	}
	d.heldSlots += step
}

func (d *Packed) publish() bool {
	if len(d.held) == 0 {
		return false
	}
	// QEMU virtqueue_packed_flush: every element but the first (plain
	// stores: the driver reads them only after the first), then the first
	// one's flags after a write barrier (the seq-cst store).
	for _, h := range d.held[1:] {
		binary.LittleEndian.PutUint32(d.desc[h.off:h.off+4], h.word)
	}
	shm.Store32(d.desc, d.held[0].off, d.held[0].word)
	d.held = d.held[:0]
	advanced := d.heldSlots // may be a whole lap: not nextUsed - old
	next := int(d.nextUsed) + int(d.heldSlots)
	d.heldSlots = 0
	for next >= int(d.cfg.Size) {
		next -= int(d.cfg.Size)
		d.usedWrap = !d.usedWrap
	}
	d.nextUsed = uint16(next)
	if d.mis.NeverInterrupt {
		return false
	}
	// Seq-cst store above, then the load: QEMU virtio_packed_should_notify
	// after smp_mb.
	ev := shm.Load32(d.drvEvent, 0)
	switch uint16(ev>>16) & 3 {
	case evDisable:
		return false
	case evDesc:
		if !d.cfg.EventIdx {
			return true
		}
		// vring_packed_need_event: the event offset, moved back a lap if
		// its wrap bit is not the current one, crossed by old → new.
		ow := uint16(ev)
		off := ow &^ evWrap
		if (ow&evWrap != 0) != d.usedWrap {
			off -= d.cfg.Size
		}
		return needEvent(off, d.nextUsed, d.nextUsed-advanced)
	default:
		return true
	}
}

// Flush publishes used elements held back by DelayPublish.
func (d *Packed) Flush() (interrupt bool) { return d.publish() }

// SetNotify tells the driver whether to kick: the device event suppression
// structure set to DISABLE, or to ENABLE (DESC at the next descriptor to
// read with EventIdx). After enabling, check Pending.
func (d *Packed) SetNotify(enabled bool) {
	d.notify = enabled
	switch {
	case !enabled:
		d.storeDevEvent(evDisable, d.nextAvail, d.availWrap)
	case d.cfg.EventIdx:
		d.storeDevEvent(evDesc, d.nextAvail, d.availWrap)
	default:
		d.storeDevEvent(evEnable, 0, false)
	}
}

func (d *Packed) storeDevEvent(flags, off uint16, wrap bool) {
	if wrap {
		off |= evWrap
	}
	shm.Store32(d.devEvt, 0, uint32(off)|uint32(flags)<<16)
}

// Misbehave arms misbehaviour switches, replacing those armed before.
func (d *Packed) Misbehave(m Misbehaviour) { d.mis = m }

// Pending reports how many chains are available and not yet popped.
func (d *Packed) Pending() int {
	slot, w := d.nextAvail, d.availWrap
	chains := 0
	for range int(d.cfg.Size) {
		word, ok := d.avail(slot, w)
		if !ok {
			break
		}
		if uint16(word>>16)&pFNext == 0 {
			chains++
		}
		slot, w = d.step(slot, w)
	}
	return chains
}

// UsedIdx returns the next slot the device writes a used element to, and
// LastAvail the next slot it reads.
func (d *Packed) UsedIdx() uint16   { return d.nextUsed }
func (d *Packed) LastAvail() uint16 { return d.nextAvail }

// AvailFlags returns the driver event suppression flags and UsedEvent its
// off_wrap, as the device sees them now.
func (d *Packed) AvailFlags() uint16 { return uint16(shm.Load32(d.drvEvent, 0) >> 16) }
func (d *Packed) UsedEvent() uint16  { return uint16(shm.Load32(d.drvEvent, 0)) }
