package driver

import (
	"errors"
	"fmt"

	"github.com/vserial/vserial/dma"
	"github.com/vserial/vserial/ring"
)

// virtqueue is what the driver needs of one virtqueue. ring.Queue (the
// split ring) and ring.Packed (the packed ring) implement it, so the
// console protocol, the ports and the data-plane loop above them never see
// the layout (pump sees only Port and Device).
type virtqueue interface {
	// Size is the number of descriptors.
	Size() uint16
	// DescAddr, DriverAddr and DeviceAddr are the device addresses the
	// transport programs (spec 4.1.4.3).
	DescAddr() uint64
	DriverAddr() uint64
	DeviceAddr() uint64
	// Add writes a chain, Publish makes the chains added visible and says
	// whether the device wants a notification.
	Add(segs []ring.Segment) (head uint16, err error)
	Publish() (notify bool)
	// Pop returns the next chain the device used (validated); Pending
	// says whether one is there without taking it or moving an event
	// index.
	Pop() (u ring.Used, ok bool, err error)
	Pending() bool
	// EnableInterrupts asks for an interrupt at the next used chain and
	// reports whether one is already pending; DisableInterrupts asks for
	// none (advisory).
	EnableInterrupts() (pending bool)
	EnableInterruptsAfter(n uint16) (pending bool)
	DisableInterrupts()
	// InFlight counts chains the device owns.
	InFlight() int
	// Reset forgets every chain after a device reset; Close frees the
	// queue's memory.
	Reset()
	Close() error
}

var (
	_ virtqueue = (*ring.Queue)(nil)
	_ virtqueue = (*ring.Packed)(nil)
)

// newVirtqueue creates the queue cfg.Layout names: a packed ring for
// ring.PackedRing, a split ring otherwise.
func newVirtqueue(alloc dma.Allocator, cfg ring.Config) (virtqueue, error) {
	if cfg.Layout == ring.PackedRing {
		return ring.NewPacked(alloc, cfg)
	}
	return ring.New(alloc, cfg)
}

// queueCount is the number of queues the driver sets up.
func (d *Device) queueCount() int {
	if !d.multiport {
		return 2
	}
	return 2 * (int(d.nslots) + 1)
}

// allocQueuesLocked creates every queue (all before DRIVER_OK, so
// hot-plugged ports work) and the slots of the ports that have queues.
// Port 0's and the control queues come first, with the control buffers;
// then each further port's two queues, as long as the DMA budget leaves
// room for them and a reduced buffer set for every slot so far. Where it
// does not, the ports are capped there (logged, DeviceLimited), so no
// device value makes the driver allocate beyond its budget.
func (d *Device) allocQueuesLocked() error {
	n := d.queueCount()
	d.queues = make([]virtqueue, n)
	d.slots = make([]*slot, d.nslots)
	fixed := min(n, 4)
	for qi := range fixed {
		if err := d.allocQueueLocked(qi, qi < 2 || d.multiport); err != nil {
			return err
		}
	}
	d.addSlotLocked(0)
	if d.multiport {
		if err := d.allocControlLocked(); err != nil {
			return err
		}
	}
	for id := uint32(1); id < d.nslots; id++ {
		rxq, txq := portQueues(id)
		rx, err := d.queueConfig(int(rxq))
		if err != nil {
			return err
		}
		tx, err := d.queueConfig(int(txq))
		if err != nil {
			return err
		}
		if rx.Size == 0 || tx.Size == 0 {
			continue // no queues, no port with this id
		}
		if left := d.mem.left(); slotCost(rx, tx)+(d.unplanned+1)*reducedShare > left {
			d.limitedLocked(&d.limits.slots, nil, fmt.Errorf("%w: ports capped at %d of the %d the device offers (%d bytes of %d left)",
				ErrDMABudget, id, d.maxNr, left, d.mem.limit))
			d.nslots = id
			d.queues = d.queues[:d.queueCount()]
			d.slots = d.slots[:id]
			break
		}
		if err := d.newQueueLocked(int(rxq), rx); err != nil {
			return err
		}
		if err := d.newQueueLocked(int(txq), tx); err != nil {
			return err
		}
		d.addSlotLocked(id)
	}
	return nil
}

// queueConfig is the ring queue qi gets: size 0 if the device has no such
// queue.
func (d *Device) queueConfig(qi int) (ring.Config, error) {
	layout := ring.Modern
	switch {
	case d.packed:
		layout = ring.PackedRing
	case d.t.Legacy():
		layout = ring.Legacy
	}
	max, err := d.t.QueueMax(uint16(qi))
	if err != nil && !errors.Is(err, ErrNoQueue) {
		return ring.Config{}, fmt.Errorf("queue %d: %w", qi, err)
	}
	size, err := queueSize(max, d.t.Legacy())
	if err != nil {
		return ring.Config{}, fmt.Errorf("queue %d: %w", qi, err)
	}
	return ring.Config{Size: size, Layout: layout, EventIdx: d.eventIdx}, nil
}

// allocQueueLocked creates queue qi, if the device has it; a required
// queue must exist.
func (d *Device) allocQueueLocked(qi int, required bool) error {
	cfg, err := d.queueConfig(qi)
	if err != nil {
		return err
	}
	if cfg.Size == 0 {
		if required {
			return fmt.Errorf("%w: queue %d does not exist", ErrNoQueue, qi)
		}
		return nil
	}
	return d.newQueueLocked(qi, cfg)
}

// newQueueLocked allocates queue qi's ring.
func (d *Device) newQueueLocked(qi int, cfg ring.Config) error {
	q, err := newVirtqueue(d.alloc, cfg)
	if err != nil {
		return fmt.Errorf("queue %d: %w", qi, err)
	}
	d.queues[qi] = q
	return nil
}

// addSlotLocked makes the slot of port id if both its queues exist.
func (d *Device) addSlotLocked(id uint32) {
	rxq, txq := portQueues(id)
	if int(txq) >= len(d.queues) || d.queues[rxq] == nil || d.queues[txq] == nil {
		return
	}
	s := &slot{id: id, rxq: rxq, txq: txq, rx: d.queues[rxq], tx: d.queues[txq]}
	s.rxByHead = newHeadMap(int(s.rx.Size()))
	s.txByHead = newHeadMap(int(s.tx.Size()))
	d.slots[id] = s
	d.unplanned++
}

func newHeadMap(n int) []int32 {
	m := make([]int32, n)
	for i := range m {
		m[i] = -1
	}
	return m
}

// portQueues returns the receive and transmit queue of port id (spec 5.3.2).
func portQueues(id uint32) (rx, tx uint16) {
	if id == 0 {
		return 0, 1
	}
	rx = uint16(2 * (id + 1))
	return rx, rx + 1
}
