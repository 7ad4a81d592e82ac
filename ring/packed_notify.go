package ring

// Event suppression of a packed queue (spec 2.8.10, 2.8.14): when the
// device should interrupt, ENABLE, DISABLE, or DESC with an offset and wrap
// bit under VIRTIO_F_EVENT_IDX.

import "github.com/vserial/vserial/ring/internal/shm"

// usedOffWrap is the event off_wrap naming slot lastUsed in the current
// device lap.
func (q *Packed) usedOffWrap() uint16 { return offWrap(q.lastUsed, q.usedWrap) }

func offWrap(off uint16, wrap bool) uint16 {
	if wrap {
		return off | eventWrapBit
	}
	return off
}

// storeEvent writes the driver event suppression structure with one 32-bit
// atomic store: off_wrap in the low half, flags in the high half.
func (q *Packed) storeEvent(flags, ow uint16) {
	q.evFlags, q.evOffset = flags, ow
	shm.Store32(q.events, 0, uint32(ow)|uint32(flags)<<16)
}

// DisableInterrupts asks the device not to interrupt for used buffers
// (virtqueue_disable_cb_packed: flags DISABLE). Advisory (spec 2.8.10).
func (q *Packed) DisableInterrupts() {
	if q.irqOff || q.closed {
		return
	}
	q.irqOff = true
	q.storeEvent(eventDisable, q.evOffset)
}

// EnableInterrupts asks for an interrupt at the next used buffer and reports
// whether used buffers are already pending (then the caller must Pop again).
func (q *Packed) EnableInterrupts() (pending bool) {
	if q.broken != nil {
		return true
	}
	q.irqOff = false
	// virtqueue_enable_cb_prepare_packed: with EVENT_IDX, DESC at the next
	// used slot; otherwise ENABLE ...
	flags, ow := uint16(eventEnable), q.evOffset
	if q.cfg.EventIdx {
		flags, ow = eventDesc, q.usedOffWrap()
	}
	if flags != q.evFlags || ow != q.evOffset {
		q.storeEvent(flags, ow)
	}
	// ... then (virtqueue_poll_packed after virtio_mb) a fresh look at
	// the slot: the seq-cst store precedes this load, so a buffer used
	// before the device saw the request is found here rather than lost.
	_, used := q.usedAt()
	return used || q.broken != nil
}

// EnableInterruptsAfter is EnableInterrupts that asks for the interrupt only
// once n more chains have been used (virtqueue_enable_cb_delayed_packed). A
// used element advances the device's position by its chain's descriptor
// count, so only while every chain in flight took one descriptor does the
// n-th land exactly at lastUsed + n - 1; otherwise, without EVENT_IDX, or
// with n ≤ 1, it is EnableInterrupts. pending reports that n chains are
// already used.
func (q *Packed) EnableInterruptsAfter(n uint16) (pending bool) {
	if !q.cfg.EventIdx || n <= 1 || n > q.cfg.Size || q.multi != 0 {
		return q.EnableInterrupts()
	}
	if q.broken != nil {
		return true
	}
	q.irqOff = false
	slot, wrap := int(q.lastUsed)+int(n)-1, q.usedWrap
	if slot >= int(q.cfg.Size) {
		slot -= int(q.cfg.Size)
		wrap = !wrap
	}
	if ow := offWrap(uint16(slot), wrap); q.evFlags != eventDesc || q.evOffset != ow {
		q.storeEvent(eventDesc, ow)
	}
	// As in EnableInterrupts: the store above precedes this load. The
	// n-th used element is at the event slot, marked with that lap's wrap.
	flags := uint16(shm.Load32(q.desc, slot*descSize+12) >> 16)
	a, u := flags&packedFAvail != 0, flags&packedFUsed != 0
	return a == u && a == wrap
}

// Pending reports whether the device has returned chains that Pop has not
// taken yet (or the queue is broken: Pop then says why). It moves no event
// offset, so a poll loop can spin on it while interrupts are off.
func (q *Packed) Pending() bool {
	if q.broken != nil {
		return true
	}
	_, used := q.usedAt()
	return used || q.broken != nil
}
