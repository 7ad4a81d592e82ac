package ring

// Notification suppression of a split queue (spec 2.7.7, 2.7.10): when the
// device should interrupt, with or without VIRTIO_F_EVENT_IDX.

import "sync/atomic"

// needEvent reports whether moving an index from old to new crossed event,
// i.e. event lies in [old, new) modulo 2^16 (spec 2.7.10, vring_need_event).
func needEvent(event, new, old uint16) bool {
	return new-event-1 < new-old
}

// storeUsedEvent writes used_event with a 32-bit atomic store.
func (q *Queue) storeUsedEvent(v uint16) {
	q.usedEvent = v
	if q.usedEventHigh {
		w := atomic.LoadUint32(q.usedEventP) // our own word
		atomic.StoreUint32(q.usedEventP, w&0xffff|uint32(v)<<16)
		return
	}
	// The high half is padding we own; keep it zero.
	atomic.StoreUint32(q.usedEventP, uint32(v))
}

// DisableInterrupts asks the device not to interrupt for used buffers.
// The request is advisory (spec 2.7.7); interrupts may still arrive.
func (q *Queue) DisableInterrupts() {
	if q.irqOff || q.closed {
		return
	}
	q.irqOff = true
	if q.cfg.EventIdx {
		// Spec 2.7.10: with EVENT_IDX avail.flags stays 0. Park used_event
		// just behind what we consumed, where the device reaches it only
		// after a full 2^16 wrap (virtqueue_disable_cb_split writes a far
		// value for the same reason).
		q.storeUsedEvent(q.lastUsed - 1)
		return
	}
	q.availFlags = availFNoInterrupt
	atomic.StoreUint32(q.availHdr, uint32(q.availFlags)|uint32(q.published)<<16)
}

// EnableInterrupts asks for an interrupt at the next used buffer and reports
// whether used buffers are already pending (then the caller must Pop again).
func (q *Queue) EnableInterrupts() (pending bool) {
	if q.broken != nil {
		return true
	}
	q.irqOff = false
	// Spec 2.7.14.4 (virtqueue_enable_cb_prepare_split): write used_event
	// or clear NO_INTERRUPT ...
	if q.cfg.EventIdx {
		if q.usedEvent != q.lastUsed {
			q.storeUsedEvent(q.lastUsed)
		}
	} else if q.availFlags != 0 {
		q.availFlags = 0
		atomic.StoreUint32(q.availHdr, uint32(q.published)<<16)
	}
	if q.lastUsed != q.usedIdx {
		return true
	}
	// ... then a full barrier and a fresh look at used.idx
	// (virtqueue_poll_split after virtio_mb): the seq-cst store above
	// precedes this load, so a buffer the device used before seeing our
	// request is found here rather than lost.
	return uint16(atomic.LoadUint32(q.usedHdr)>>16) != q.lastUsed
}

// Pending reports whether the device has returned chains that Pop has not
// taken yet (or the queue is broken: Pop then says why). It reads used.idx
// at most once and moves no event index, so a poll loop can spin on it
// while interrupts are off.
func (q *Queue) Pending() bool {
	if q.broken != nil {
		return true
	}
	return q.lastUsed != q.usedIdx || q.reload() || q.broken != nil
}

// EnableInterruptsAfter is EnableInterrupts that asks for the interrupt
// only once n more chains have been used (EVENT_IDX: used_event = last
// used + n - 1; virtqueue_enable_cb_delayed_split does the same with 3/4
// of the chains in flight), to move a stream in fewer, larger batches.
// Without EVENT_IDX, or with n ≤ 1, it is EnableInterrupts. pending
// reports that n chains are already used.
func (q *Queue) EnableInterruptsAfter(n uint16) (pending bool) {
	if !q.cfg.EventIdx || n <= 1 {
		return q.EnableInterrupts()
	}
	if q.broken != nil {
		return true
	}
	q.irqOff = false
	if ev := q.lastUsed + n - 1; q.usedEvent != ev {
		q.storeUsedEvent(ev)
	}
	// As in EnableInterrupts: the store above precedes this load.
	return uint16(atomic.LoadUint32(q.usedHdr)>>16)-q.lastUsed >= n
}
