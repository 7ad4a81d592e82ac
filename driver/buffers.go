package driver

// Data buffers: allocated per port slot on first use, posted, re-posted and
// published, and the notification that tells the device.

import (
	"fmt"

	"github.com/vserial/vserial/ring"
)

// ensureRxLocked allocates the slot's receive buffers the first time the
// port id is announced, after the DMA budget decided the slot's buffer set
// (planLocked).
func (d *Device) ensureRxLocked(s *slot) error {
	if s.rxBufs != nil {
		return nil
	}
	if err := d.planLocked(s); err != nil {
		return err
	}
	n := s.plan.rx
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

// ensureTxLocked allocates the slot's transmit buffers at first use, from
// the bytes its plan reserved.
func (d *Device) ensureTxLocked(s *slot) error {
	if s.txBufs != nil || d.broken() {
		return nil
	}
	if err := d.planLocked(s); err != nil {
		return err
	}
	d.mem.unreserve(s.txReserved)
	s.txReserved = 0
	n, size := s.plan.tx, s.plan.txSize
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
	s.rxReleased = true
	if s.posting && !d.broken() {
		d.postOneRxLocked(s, i)
	}
}

// kickRxLocked publishes re-posted receive buffers and notifies if needed.
func (d *Device) kickRxLocked(s *slot) {
	if s.rxReleased {
		// Every reader calls this after handing buffers back: one clock
		// read per batch, not per buffer.
		s.rxReleased = false
		s.rxMoved = d.clock()
	}
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
	if d.salvaging {
		return // the device is being reset
	}
	d.stats.Kicks++
	if err := d.t.Notify(q); err != nil {
		d.log.Warn("virtio-console: notify", "queue", q, "err", err)
	}
}
