package driver

import (
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
