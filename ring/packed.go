package ring

// The packed ring (spec 2.8), step by step.
//
// Packed (NewPacked, Layout PackedRing) is one descriptor ring both sides
// write, plus a driver and a device event suppression word. Ownership of a
// descriptor is its AVAIL/USED flag bits against the wrap counters: the
// driver's (avail, flips when Add wraps) and its copy of the device's (used,
// flips when Pop wraps). Buffer ids come from a free list of their own; the
// device returns one used element per chain, and the driver skips the
// chain's other slots using its private record of the chain length. Add
// writes every descriptor except the first flags of the batch, which Publish
// stores last with a 32-bit atomic (the release of spec 2.8.21,
// virtqueue_add_packed's virtio_wmb); Pop loads a slot's id|flags word
// atomically (the acquire of virtqueue_get_buf_ctx_packed's virtio_rmb)
// before reading len. Event suppression (spec 2.8.10) is ENABLE, DISABLE,
// or DESC with an offset and wrap bit when EVENT_IDX is negotiated; kick
// and interrupt decisions use the split ring's need_event arithmetic with
// the offset moved back a lap when its wrap bit is not the current one
// (virtqueue_kick_prepare_packed). Device writes are checked as for the
// split ring: an id out of range, not in flight or not yet published, a used
// element where nothing was made available, a slot whose flags match neither
// the driver's marking nor a used one for the current lap, a chain running
// past the published slots — each a *ProtocolError; lengths are clamped.

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/vserial/vserial/dma"
	"github.com/vserial/vserial/ring/internal/shm"
)

// Packed descriptor flags (spec 2.8.4, 2.8.1): NEXT, WRITE and INDIRECT as
// in the split ring, plus the AVAIL and USED bits that, compared with the
// wrap counters, say who owns a descriptor.
const (
	packedFAvail = 1 << 7
	packedFUsed  = 1 << 15
)

// Event suppression flags (spec 2.8.14, desc_event_flags).
const (
	eventEnable  = 0
	eventDisable = 1
	eventDesc    = 2
	eventWrapBit = 1 << 15
)

// packedState is the driver's private record of one buffer id (Linux
// vring_desc_state_packed): the device only ever hands back the id.
type packedState struct {
	next     uint16 // free-id list link
	ndesc    uint16 // ring descriptors the chain took; 0 when not in flight
	seq      uint32 // Add sequence number, to tell unpublished chains
	writable uint32 // device-writable bytes posted
}

// Packed is the driver side of one packed virtqueue (spec 2.8,
// VIRTIO_F_RING_PACKED). It implements the same methods as Queue.
//
// Memory: one allocation holding the descriptor ring (16·N bytes, 16-aligned)
// followed by the driver event suppression structure (4 bytes, the driver
// writes) and the device event suppression structure (4 bytes, the device
// writes), both 4-aligned as spec 2.8.10.1 / 2.8.14 require; plus the
// indirect tables when Indirect > 0.
//
// Shared words and their writers:
//   - descriptor addr and len: the driver when making available, the device
//     (len) when marking used; plain accesses ordered by the flags word;
//   - descriptor id|flags (offset 12 of each descriptor): both sides; the
//     driver stores the first flags of each batch with a 32-bit atomic (the
//     release that publishes it and everything after it) and the rest
//     plainly, the device stores used flags atomically, both load them
//     atomically (acquire);
//   - driver event suppression: the driver, stored atomically;
//   - device event suppression: the device, loaded atomically.
type Packed struct {
	core

	desc     []byte // descriptor ring, 16·N bytes
	events   []byte // driver event (offset 0) and device event (offset 4) words
	indirect []byte

	descAddr, indirectAddr uint64

	state  []packedState
	freeID uint16
	multi  int // chains in flight that took more than one descriptor

	nextAvail uint16 // next ring slot to fill
	availWrap bool   // driver ring wrap counter (spec 2.8.1), starts at 1
	unpub     int    // slots added and not yet published
	addSeq    uint32 // chains added
	pubSeq    uint32 // addSeq at the last Publish
	// The first descriptor of the oldest unpublished chain: its flags word
	// is the last thing written (Publish), after every other descriptor.
	pendOff  int
	pendWord uint32

	lastUsed uint16 // next ring slot the device writes a used element to
	usedWrap bool   // the driver's copy of the device wrap counter

	evFlags  uint16 // shadow of the driver event suppression flags
	evOffset uint16 // shadow of its off_wrap
	irqOff   bool
}

// NewPacked allocates and zeroes a packed queue's memory from alloc. Size
// need not be a power of two (spec 2.8.10.1); Layout must be PackedRing.
func NewPacked(alloc dma.Allocator, cfg Config) (*Packed, error) {
	if !shm.LittleEndian() {
		return nil, errors.New("ring: new packed: big-endian hosts are not supported")
	}
	n := int(cfg.Size)
	if n == 0 || n > 32768 {
		return nil, fmt.Errorf("ring: new packed: queue size %d is not in 1..32768", cfg.Size)
	}
	if alloc == nil {
		return nil, errors.New("ring: new packed: nil allocator")
	}
	if cfg.Layout != PackedRing {
		return nil, fmt.Errorf("ring: new packed: layout %d is not PackedRing", cfg.Layout)
	}
	if cfg.Indirect < 0 || cfg.Indirect > n {
		return nil, fmt.Errorf("ring: new packed: indirect table of %d descriptors: want 0..%d", cfg.Indirect, n)
	}
	q := &Packed{core: core{cfg: cfg, alloc: alloc}}
	ok := false
	defer func() {
		if !ok {
			q.Close()
		}
	}()
	r, err := q.allocate(packedRingSize(n), 16)
	if err != nil {
		return nil, fmt.Errorf("ring: new packed: %w", err)
	}
	b := r.Bytes()
	q.desc, q.events = b[:descSize*n:descSize*n], b[descSize*n:]
	q.descAddr = r.Addr()
	if cfg.Indirect > 0 {
		t, err := q.allocate(descSize*cfg.Indirect*n, 16)
		if err != nil {
			return nil, fmt.Errorf("ring: new packed: %w", err)
		}
		q.indirect, q.indirectAddr = t.Bytes(), t.Addr()
	}
	if !shm.Aligned4(q.desc) {
		return nil, errors.New("ring: new packed: allocator returned memory that is not 4-byte aligned for the CPU; 32-bit atomics need it")
	}
	q.state = make([]packedState, n)
	q.Reset()
	ok = true
	return q, nil
}

// packedRingSize is the ring allocation of a packed queue of n: the
// descriptors, then the driver and the device event suppression words.
func packedRingSize(n int) int { return descSize*n + 8 }

// DescAddr, DriverAddr and DeviceAddr return the device addresses of the
// descriptor ring and of the driver and device event suppression
// structures (spec 4.1.4.3: queue_desc, queue_driver, queue_device).
func (q *Packed) DescAddr() uint64   { return q.descAddr }
func (q *Packed) DriverAddr() uint64 { return q.descAddr + uint64(len(q.desc)) }
func (q *Packed) DeviceAddr() uint64 { return q.descAddr + uint64(len(q.desc)) + 4 }

// availBits returns the AVAIL/USED bits that mark a descriptor available in
// the lap with wrap counter w: AVAIL = w, USED = !w (spec 2.8.1).
func availBits(w bool) uint16 {
	if w {
		return packedFAvail
	}
	return packedFUsed
}

// checkChain validates a chain for Add (both layouts): segments present,
// device-readable ones first (spec 2.7.4.2, 2.8.4), at most size segments
// and 2^32-1 bytes. It returns the device-writable byte count.
func checkChain(segs []Segment, size uint16) (writable uint64, err error) {
	if len(segs) == 0 || len(segs) > int(size) {
		return 0, ErrBadChain
	}
	var total uint64
	sawWrite := false
	for i := range segs {
		s := &segs[i]
		total += uint64(s.Len)
		if s.Write {
			writable += uint64(s.Len)
			sawWrite = true
		} else if sawWrite {
			return 0, ErrBadChain
		}
	}
	if total > 1<<32-1 {
		return 0, ErrBadChain
	}
	return writable, nil
}

// Add writes a chain (device-readable segments first) and returns its buffer
// id. The chain is not visible to the device until Publish. ErrFull if there
// are not enough free descriptors; ErrBadChain if the chain is malformed; the
// protocol error if the queue is broken.
func (q *Packed) Add(segs []Segment) (id uint16, err error) {
	if q.broken != nil {
		return 0, q.broken
	}
	if len(segs) == 1 {
		return q.addOne(&segs[0])
	}
	writable, err := checkChain(segs, q.cfg.Size)
	if err != nil {
		return 0, err
	}
	n := len(segs)
	indirect := n > 1 && n <= q.cfg.Indirect
	need := n
	if indirect {
		need = 1
	}
	if need > q.numFree {
		return 0, ErrFull
	}
	id = q.freeID
	st := &q.state[id]
	q.freeID = st.next

	// Spec 2.8.21 (virtqueue_add_packed): every descriptor but the first
	// gets its flags now; the first one's flags are written last, so the
	// device sees the chain whole or not at all.
	first := int(q.nextAvail) * descSize
	var firstWord uint32
	if indirect {
		// Spec 2.8.19: the table's descriptors are consecutive, WRITE is
		// their only flag, ids are ignored.
		tsz := descSize * q.cfg.Indirect
		tbl := q.indirect[int(id)*tsz : int(id+1)*tsz]
		for i := range segs {
			s := &segs[i]
			var flags uint16
			if s.Write {
				flags = descFWrite
			}
			putDesc(tbl, i, s.Addr, s.Len, 0, flags) // packed: id at 12, flags at 14
		}
		d := q.desc[first : first+descSize : first+descSize]
		binary.LittleEndian.PutUint64(d[0:], q.indirectAddr+uint64(int(id)*tsz))
		binary.LittleEndian.PutUint32(d[8:], uint32(n*descSize))
		firstWord = uint32(id) | uint32(descFIndirect|availBits(q.availWrap))<<16
		q.advanceAvail()
	} else {
		for i := range segs {
			s := &segs[i]
			flags := availBits(q.availWrap)
			if s.Write {
				flags |= descFWrite
			}
			if i < n-1 {
				flags |= descFNext
			}
			off := int(q.nextAvail) * descSize
			d := q.desc[off : off+descSize : off+descSize]
			binary.LittleEndian.PutUint64(d[0:], s.Addr)
			binary.LittleEndian.PutUint32(d[8:], s.Len)
			w := uint32(id) | uint32(flags)<<16
			if i == 0 {
				firstWord = w
			} else {
				// A plain store: the device reads this word only after
				// the release store of the batch's first flags (Publish).
				binary.LittleEndian.PutUint32(d[12:], w)
			}
			q.advanceAvail()
		}
	}
	q.placeFirst(first+12, firstWord)
	q.commit(st, need, uint32(writable))
	return id, nil
}

// addOne is Add for a chain of one segment, the common case: one
// descriptor, never indirect, always a valid chain. It writes the same
// bytes Add would.
func (q *Packed) addOne(s *Segment) (id uint16, err error) {
	if q.numFree == 0 {
		return 0, ErrFull
	}
	id = q.freeID
	st := &q.state[id]
	q.freeID = st.next
	flags := availBits(q.availWrap)
	var writable uint32
	if s.Write {
		flags |= descFWrite
		writable = s.Len
	}
	off := int(q.nextAvail) * descSize
	d := q.desc[off : off+descSize : off+descSize]
	binary.LittleEndian.PutUint64(d[0:], s.Addr)
	binary.LittleEndian.PutUint32(d[8:], s.Len)
	q.placeFirst(off+12, uint32(id)|uint32(flags)<<16)
	q.advanceAvail()
	q.commit(st, 1, writable)
	return id, nil
}

// placeFirst writes the id|flags word of a chain's first descriptor: held
// back for Publish if it starts the batch; otherwise an earlier unpublished
// chain's first descriptor still hides it from the device, which reads the
// ring in order, so a plain store suffices (the release in Publish orders
// it).
func (q *Packed) placeFirst(off int, word uint32) {
	if q.unpub == 0 {
		q.pendOff, q.pendWord = off, word
		return
	}
	binary.LittleEndian.PutUint32(q.desc[off:off+4], word)
}

// commit records a chain of need descriptors just written under st's id.
func (q *Packed) commit(st *packedState, need int, writable uint32) {
	q.numFree -= need
	q.unpub += need
	st.ndesc, st.seq, st.writable = uint16(need), q.addSeq, writable
	if need > 1 {
		q.multi++
	}
	q.addSeq++
	q.inFlight++
	q.stats.Added++
}

func (q *Packed) advanceAvail() {
	q.nextAvail++
	if q.nextAvail == q.cfg.Size {
		q.nextAvail = 0
		q.availWrap = !q.availWrap
	}
}

// Publish makes every chain added since the last Publish available by
// writing the flags of the first one, and reports whether the device must be
// notified.
func (q *Packed) Publish() (notify bool) {
	if q.broken != nil || q.unpub == 0 {
		return false
	}
	// Spec 2.8.21 (virtqueue_add_packed: virtio_wmb before the head's
	// flags): the seq-cst store is a release, so every descriptor written
	// by Add is visible before the device can see the head available.
	shm.Store32(q.desc, q.pendOff, q.pendWord)
	added := uint16(q.unpub)
	q.unpub = 0
	q.pubSeq = q.addSeq
	// Spec 2.8.22 (virtqueue_kick_prepare_packed: virtio_mb): the flags
	// store is ordered before this load of the device's suppression
	// structure (both seq-cst), so a kick the device asked for is not lost.
	w := shm.Load32(q.events, 4)
	switch uint16(w>>16) & 3 {
	case eventDisable:
		return false
	case eventDesc:
		if !q.cfg.EventIdx {
			return true // DESC without EVENT_IDX is not allowed: kick
		}
		// Kick iff the descriptor at the event offset (in the event's lap)
		// was made available by this batch: vring_need_event on ring
		// offsets, the offset moved back a lap if its wrap bit is not the
		// driver's current one.
		offWrap := uint16(w)
		ev := offWrap &^ eventWrapBit
		if (offWrap&eventWrapBit != 0) != q.availWrap {
			ev -= q.cfg.Size
		}
		return needEvent(ev, q.nextAvail, q.nextAvail-added)
	default:
		return true // ENABLE, or the reserved value 3: never lose a kick
	}
}

// usedAt classifies the descriptor at ring slot lastUsed: used (a used
// element of the current device lap), or not yet. A published slot that
// holds neither the driver's available marking nor a used one breaks the
// queue.
func (q *Packed) usedAt() (w uint32, used bool) {
	// Spec 2.8.23 (virtqueue_get_buf_ctx_packed: virtio_rmb after reading
	// the flags): the atomic load is an acquire, so len read after it is at
	// least as new as the flags.
	w = shm.Load32(q.desc, int(q.lastUsed)*descSize+12)
	flags := uint16(w >> 16)
	a, u := flags&packedFAvail != 0, flags&packedFUsed != 0
	if a == u && a == q.usedWrap {
		return w, true
	}
	if q.pubInFlight() > 0 && !(a == q.usedWrap && u != q.usedWrap) {
		// The driver marked this slot available in the current lap; the
		// device may only turn it used (AVAIL = USED = wrap).
		q.violate("descriptor flags inconsistent with the used wrap counter", uint64(flags))
	}
	return w, false
}

// pubInFlight is the number of ring slots published and not yet used.
func (q *Packed) pubInFlight() int {
	return int(q.cfg.Size) - q.numFree - q.unpub
}

// Pop returns the next used chain and frees its descriptors. ok is false when
// nothing is pending. A device protocol violation is returned as an error
// matching ErrDeviceProtocol, and the queue stays broken until Reset.
func (q *Packed) Pop() (u Used, ok bool, err error) {
	if q.broken != nil {
		return Used{}, false, q.broken
	}
	w, used := q.usedAt()
	if !used {
		if q.broken != nil {
			return Used{}, false, q.broken
		}
		// Drained. With EVENT_IDX and interrupts wanted, point the driver
		// event at the next slot so its used element interrupts, then look
		// again (virtqueue_get_buf_ctx_packed moves off_wrap per buffer;
		// we do it once per drain and re-check).
		if !q.cfg.EventIdx || q.irqOff || q.evFlags == eventDesc && q.evOffset == q.usedOffWrap() {
			return Used{}, false, nil
		}
		q.storeEvent(eventDesc, q.usedOffWrap())
		if w, used = q.usedAt(); !used {
			return Used{}, false, q.broken
		}
	}
	if q.pubInFlight() == 0 {
		q.violate("used descriptor with no buffer made available", uint64(w>>16))
		return Used{}, false, q.broken
	}
	id := uint16(w)
	if id >= q.cfg.Size {
		q.violate("used id out of range", uint64(id))
		return Used{}, false, q.broken
	}
	st := &q.state[id]
	if st.ndesc == 0 || st.seq-q.pubSeq < q.addSeq-q.pubSeq {
		q.violate("used id not in flight", uint64(id))
		return Used{}, false, q.broken
	}
	if int(st.ndesc) > q.pubInFlight() {
		q.violate("used chain runs past the descriptors made available", uint64(id))
		return Used{}, false, q.broken
	}
	off := int(q.lastUsed) * descSize
	n := binary.LittleEndian.Uint32(q.desc[off+8 : off+12])
	if n > st.writable {
		// Spec 2.8.8: the driver must not rely on more than it posted.
		q.stats.Clamped++
		n = st.writable
	}
	// Spec 2.8.9: the device skips the chain's other descriptors; the
	// next used element is ndesc slots on.
	next := int(q.lastUsed) + int(st.ndesc)
	if next >= int(q.cfg.Size) {
		next -= int(q.cfg.Size)
		q.usedWrap = !q.usedWrap
	}
	q.lastUsed = uint16(next)
	q.numFree += int(st.ndesc)
	if st.ndesc > 1 {
		q.multi--
	}
	st.ndesc = 0
	st.next = q.freeID
	q.freeID = id
	q.inFlight--
	q.stats.Used++
	return Used{Head: id, Len: n}, true, nil
}

// InFlightHeads calls fn for every buffer id still owned by the device
// (published or not yet published).
func (q *Packed) InFlightHeads(fn func(head uint16)) {
	for i := range q.state {
		if q.state[i].ndesc != 0 {
			fn(uint16(i))
		}
	}
}

// Reset forgets every in-flight chain and re-zeroes the ring. Call it only
// after the device has been reset, never on a live queue. Stats are kept.
// Reset after Close does nothing.
func (q *Packed) Reset() {
	if q.closed {
		return
	}
	clear(q.desc)
	clear(q.events)
	clear(q.indirect)
	for i := range q.state {
		q.state[i] = packedState{next: uint16(i + 1)}
	}
	q.freeID, q.numFree, q.inFlight, q.multi = 0, len(q.state), 0, 0
	q.nextAvail, q.availWrap, q.unpub = 0, true, 0
	q.addSeq, q.pubSeq = 0, 0
	q.pendOff, q.pendWord = 0, 0
	q.lastUsed, q.usedWrap = 0, true
	q.evFlags, q.evOffset, q.irqOff = eventEnable, 0, false
	q.broken = nil
}

// Close frees the queue's memory. It is idempotent.
func (q *Packed) Close() error {
	done, err := q.free()
	if done {
		return nil
	}
	q.desc, q.events, q.indirect = nil, nil, nil
	return err
}
