package ring

import (
	"encoding/binary"
	"fmt"
	"sync/atomic"

	"github.com/vserial/vserial/dma"
	"github.com/vserial/vserial/ring/internal/shm"
)

// Descriptor flags (spec 2.7.5).
const (
	descFNext     = 1
	descFWrite    = 2
	descFIndirect = 4
	descSize      = 16
)

// Ring flags (spec 2.7.6, 2.7.8).
const (
	availFNoInterrupt = 1
	usedFNoNotify     = 1
)

// descState is the driver's private copy of what it knows about a
// descriptor. The descriptor table itself is device-visible memory, so the
// free list and chain bookkeeping never read it back (Linux keeps the same
// copy in desc_extra).
type descState struct {
	next     uint16 // free-list and chain link
	tail     uint16 // heads only: last descriptor of the chain
	ndesc    uint16 // heads only: ring descriptors taken; 0 when not a head in flight
	pos      uint16 // heads only: avail index the head was placed at
	writable uint32 // heads only: device-writable bytes posted
}

// Queue is the driver side of one split virtqueue.
//
// Shared words and their writers:
//   - descriptor table, indirect tables, avail ring entries: the driver only;
//   - avail flags|idx (driver area offset 0) and used_event: the driver only,
//     stored with 32-bit atomics;
//   - used flags|idx (device area offset 0) and avail_event: the device only,
//     loaded with 32-bit atomics;
//   - used ring entries: the device only, read after the used idx load.
type Queue struct {
	core

	desc     []byte // descriptor table, 16·N bytes
	avail    []byte // driver area: flags, idx, ring[N], used_event (+padding)
	used     []byte // device area: flags, idx, ring[N]{id,len}, avail_event (+padding)
	indirect []byte // N indirect tables of cfg.Indirect descriptors, or nil

	descAddr, driverAddr, deviceAddr, indirectAddr uint64

	mask          uint16
	usedEventWord int  // offset in avail of the 32-bit word holding used_event
	usedEventHigh bool // used_event is the high half of that word (N == 1)
	availEventOff int  // offset in used of avail_event (always 4-aligned)

	// The shared 32-bit words, bounds- and alignment-checked once in New
	// (shm.Word) so the hot path pays no per-access check; nil after Close.
	availHdr   *uint32 // avail flags|idx (driver writes)
	usedHdr    *uint32 // used flags|idx (device writes)
	availEvent *uint32 // word holding avail_event (device writes)
	usedEventP *uint32 // word holding used_event (driver writes)

	state    []descState
	freeHead uint16

	availIdx   uint16 // next avail slot to fill, including unpublished chains
	published  uint16 // the avail idx last stored to memory
	availFlags uint16 // shadow of avail.flags
	lastUsed   uint16 // next used slot to read
	usedIdx    uint16 // cached used.idx, reloaded only when drained
	usedEvent  uint16 // shadow of used_event
	irqOff     bool   // DisableInterrupts in effect

}

// New allocates and zeroes the queue's memory from alloc and returns the queue.
func New(alloc dma.Allocator, cfg Config) (*Queue, error) {
	if err := checkConfig(alloc, cfg); err != nil {
		return nil, err
	}
	n := int(cfg.Size)
	q := &Queue{core: core{cfg: cfg, alloc: alloc}, mask: uint16(n - 1)}
	ok := false
	defer func() {
		if !ok {
			q.Close()
		}
	}()
	if err := q.layOut(n); err != nil {
		return nil, fmt.Errorf("ring: new: %w", err)
	}
	ue := 4 + 2*n
	q.usedEventWord, q.usedEventHigh = ue&^3, ue&3 != 0
	q.availEventOff = 4 + 8*n
	q.availHdr, q.usedHdr = shm.Word(q.avail, 0), shm.Word(q.used, 0)
	q.availEvent = shm.Word(q.used, q.availEventOff)
	q.usedEventP = shm.Word(q.avail, q.usedEventWord)
	q.state = make([]descState, n)
	q.Reset()
	ok = true
	return q, nil
}

// DescAddr, DriverAddr and DeviceAddr return the device addresses of the
// descriptor table, the driver (avail) area and the device (used) area. For
// the legacy layout DescAddr is the start of the block (QUEUE_PFN << 12).
func (q *Queue) DescAddr() uint64   { return q.descAddr }
func (q *Queue) DriverAddr() uint64 { return q.driverAddr }
func (q *Queue) DeviceAddr() uint64 { return q.deviceAddr }

// putDesc writes descriptor i of table t (spec 2.7.5, little-endian).
func putDesc(t []byte, i int, addr uint64, n uint32, flags, next uint16) {
	d := t[i*descSize : i*descSize+descSize : i*descSize+descSize]
	binary.LittleEndian.PutUint64(d[0:], addr)
	binary.LittleEndian.PutUint32(d[8:], n)
	binary.LittleEndian.PutUint16(d[12:], flags)
	binary.LittleEndian.PutUint16(d[14:], next)
}

// Add writes a chain (device-readable segments first) and returns its head.
// The chain is not visible to the device until Publish. ErrFull if there are
// not enough free descriptors; ErrBadChain if the chain is malformed; the
// protocol error if the queue is broken.
func (q *Queue) Add(segs []Segment) (head uint16, err error) {
	if q.broken != nil {
		return 0, q.broken
	}
	n := len(segs)
	if n == 1 {
		return q.addOne(&segs[0])
	}
	writable, err := checkChain(segs, q.cfg.Size)
	if err != nil {
		return 0, err
	}
	indirect := n > 1 && n <= q.cfg.Indirect
	need := n
	if indirect {
		need = 1
	}
	if need > q.numFree {
		return 0, ErrFull
	}

	head = q.freeHead
	tail := head
	if indirect {
		// Spec 2.7.5.3: the table for this head, entries chained from 0.
		tsz := descSize * q.cfg.Indirect
		tbl := q.indirect[int(head)*tsz : int(head+1)*tsz]
		for i := range segs {
			s := &segs[i]
			var flags uint16
			if s.Write {
				flags = descFWrite
			}
			if i < n-1 {
				flags |= descFNext
			}
			putDesc(tbl, i, s.Addr, s.Len, flags, uint16(i+1))
		}
		putDesc(q.desc, int(head), q.indirectAddr+uint64(int(head)*tsz), uint32(n*descSize), descFIndirect, 0)
		q.freeHead = q.state[head].next
	} else {
		idx := head
		for i := range segs {
			s := &segs[i]
			var flags uint16
			if s.Write {
				flags = descFWrite
			}
			next := q.state[idx].next
			if i < n-1 {
				flags |= descFNext
			}
			putDesc(q.desc, int(idx), s.Addr, s.Len, flags, next)
			tail = idx
			idx = next
		}
		q.freeHead = idx
	}
	q.numFree -= need

	st := &q.state[head]
	st.tail, st.ndesc, st.pos, st.writable = tail, uint16(need), q.availIdx, uint32(writable)

	// Spec 2.7.13.2: place the head in the next avail ring slot. It becomes
	// visible with the idx store in Publish (virtqueue_add_split).
	q.putAvail(q.availIdx&q.mask, head)
	q.availIdx++
	q.inFlight++
	q.stats.Added++
	return head, nil
}

// addOne is Add for a chain of one segment, the common case: one
// descriptor, never indirect, always a valid chain, so the validation pass
// and the chain walk drop out. It writes the same bytes Add would.
func (q *Queue) addOne(s *Segment) (head uint16, err error) {
	if q.numFree == 0 {
		return 0, ErrFull
	}
	head = q.freeHead
	var flags uint16
	var writable uint32
	if s.Write {
		flags, writable = descFWrite, s.Len
	}
	st := &q.state[head]
	next := st.next
	putDesc(q.desc, int(head), s.Addr, s.Len, flags, next)
	q.freeHead = next
	q.numFree--
	st.tail, st.ndesc, st.pos, st.writable = head, 1, q.availIdx, writable
	q.putAvail(q.availIdx&q.mask, head)
	q.availIdx++
	q.inFlight++
	q.stats.Added++
	return head, nil
}

// putAvail writes avail.ring[slot]. With N == 1 the slot shares its 32-bit
// word with used_event, which is stored atomically, so the slot is too.
func (q *Queue) putAvail(slot, head uint16) {
	off := 4 + 2*int(slot)
	if q.usedEventHigh {
		w := atomic.LoadUint32(q.usedEventP) // our own word: no one else writes it
		atomic.StoreUint32(q.usedEventP, w&^0xffff|uint32(head))
		return
	}
	binary.LittleEndian.PutUint16(q.avail[off:off+2], head)
}

// Publish makes every chain added since the last Publish available with one
// index update and reports whether the device must be notified.
func (q *Queue) Publish() (notify bool) {
	if q.broken != nil || q.availIdx == q.published {
		return false
	}
	old, new := q.published, q.availIdx
	// Spec 2.7.13.3 (virtqueue_add_split: virtio_wmb before avail->idx):
	// descriptors and ring entries must be visible before the idx. The idx
	// and the flags beside it are published as one 32-bit atomic store,
	// which is a release.
	atomic.StoreUint32(q.availHdr, uint32(q.availFlags)|uint32(new)<<16)
	q.published = new
	// Spec 2.7.13.4 (virtqueue_kick_prepare_split: virtio_mb): the idx store
	// must be visible before we read the device's suppression word, or a
	// kick the device is owed can be lost. Go's atomics are sequentially
	// consistent, so the store above and the load below are ordered.
	if q.cfg.EventIdx {
		// Spec 2.7.10: kick iff the new idx crossed avail_event.
		ev := uint16(atomic.LoadUint32(q.availEvent))
		return needEvent(ev, new, old)
	}
	// Spec 2.7.7: without EVENT_IDX, kick unless the device set NO_NOTIFY.
	return atomic.LoadUint32(q.usedHdr)&usedFNoNotify == 0
}

// reload reads used.idx once (one 32-bit load of used flags|idx, an acquire
// that pairs with the device's release store) and validates how far it moved.
// It reports whether new used entries are pending.
func (q *Queue) reload() bool {
	// Spec 2.7.14 (virtqueue_get_buf_ctx_split: virtio_rmb after reading
	// used->idx): the load is an acquire, so the used entries read after it
	// are at least as new as the idx.
	idx := uint16(atomic.LoadUint32(q.usedHdr) >> 16)
	moved := idx - q.lastUsed
	// The device can only return chains it was given: used.idx may not run
	// ahead of the chains published and not yet reaped (which never exceeds
	// the queue size).
	if outstanding := q.published - q.lastUsed; moved > outstanding {
		q.violate("used idx advanced past the chains made available", uint64(idx))
		return false
	}
	q.usedIdx = idx
	return moved != 0
}

// Pop returns the next used chain and frees its descriptors. ok is false when
// nothing is pending. A device protocol violation is returned as an error
// matching ErrDeviceProtocol, and the queue stays broken until Reset.
func (q *Queue) Pop() (u Used, ok bool, err error) {
	if q.broken != nil {
		return Used{}, false, q.broken
	}
	if q.lastUsed == q.usedIdx && !q.reload() {
		if q.broken != nil {
			return Used{}, false, q.broken
		}
		// Drained. With EVENT_IDX and interrupts wanted, move used_event to
		// what we consumed so the next used buffer interrupts, then look
		// again (virtqueue_get_buf_ctx_split updates used_event per buffer;
		// we do it once per drain and re-check, as
		// virtqueue_enable_cb_prepare_split + virtqueue_poll do).
		if !q.cfg.EventIdx || q.irqOff || q.usedEvent == q.lastUsed {
			return Used{}, false, nil
		}
		q.storeUsedEvent(q.lastUsed)
		if !q.reload() {
			return Used{}, false, q.broken
		}
	}
	slot := int(q.lastUsed & q.mask)
	e := q.used[4+8*slot : 12+8*slot : 12+8*slot]
	id := binary.LittleEndian.Uint32(e[0:])
	n := binary.LittleEndian.Uint32(e[4:])
	if id >= uint32(q.cfg.Size) {
		q.violate("used id out of range", uint64(id))
		return Used{}, false, q.broken
	}
	st := &q.state[id]
	if st.ndesc == 0 || q.unpublished(st.pos) {
		q.violate("used id not in flight", uint64(id))
		return Used{}, false, q.broken
	}
	if n > st.writable {
		// Spec 2.7.8.2: the driver must not rely on len beyond what it
		// posted; clamp (QEMU reports full lengths it had to truncate).
		q.stats.Clamped++
		n = st.writable
	}
	// Return the chain to the free list: its private links already run
	// head → tail.
	q.state[st.tail].next = q.freeHead
	q.freeHead = uint16(id)
	q.numFree += int(st.ndesc)
	st.ndesc = 0
	q.inFlight--
	q.lastUsed++
	q.stats.Used++
	return Used{Head: uint16(id), Len: n}, true, nil
}

// unpublished reports whether avail position pos was filled by Add but not
// yet made visible by Publish.
func (q *Queue) unpublished(pos uint16) bool {
	return pos-q.published < q.availIdx-q.published
}

// InFlightHeads calls fn for every chain still owned by the device
// (published or not yet published).
func (q *Queue) InFlightHeads(fn func(head uint16)) {
	for i := range q.state {
		if q.state[i].ndesc != 0 {
			fn(uint16(i))
		}
	}
}

// Reset forgets every in-flight chain and re-zeroes the rings. Call it only
// after the device has been reset (or the queue reset), never on a live queue.
// Stats are kept: they count the queue's whole life. Reset after Close does
// nothing.
func (q *Queue) Reset() {
	if q.closed {
		return
	}
	clear(q.desc)
	clear(q.avail)
	clear(q.used)
	clear(q.indirect)
	for i := range q.state {
		q.state[i] = descState{next: uint16(i + 1)}
	}
	q.freeHead, q.numFree, q.inFlight = 0, len(q.state), 0
	q.availIdx, q.published, q.availFlags = 0, 0, 0
	q.lastUsed, q.usedIdx, q.usedEvent = 0, 0, 0
	q.irqOff = false
	q.broken = nil
}

// Close frees the queue's memory. It is idempotent.
func (q *Queue) Close() error {
	done, err := q.free()
	if done {
		return nil
	}
	q.desc, q.avail, q.used, q.indirect = nil, nil, nil, nil
	q.availHdr, q.usedHdr, q.availEvent, q.usedEventP = nil, nil, nil, nil
	return err
}
