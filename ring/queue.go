package ring

// API CONTRACT (fixed so other packages can be written against it; the ring
// helper implements the bodies and may add methods, but must not change these
// signatures without telling the integrator).

import (
	"errors"

	"github.com/vserial/vserial/dma"
)

// Layout selects how the three parts of a split virtqueue sit in memory.
type Layout uint8

const (
	// Modern places the descriptor table, driver area and device area in
	// three separate allocations (virtio 1.x, spec 2.7).
	Modern Layout = iota
	// Legacy places them in one contiguous block with the used ring aligned
	// to 4096 (spec 2.7.2), addressed by QUEUE_PFN.
	Legacy
)

// Config describes a queue to create.
type Config struct {
	Size     uint16 // power of two, 1..32768
	Layout   Layout
	EventIdx bool // VIRTIO_F_EVENT_IDX negotiated
	// Indirect, when > 0, means VIRTIO_F_INDIRECT_DESC was negotiated: chains
	// of more than one segment (and at most Indirect segments) are placed in
	// an indirect table so that they use one ring descriptor.
	Indirect int
}

// Segment is one buffer of a chain.
type Segment struct {
	Addr  uint64
	Len   uint32
	Write bool // device-writable (receive); false means device-readable
}

// Used is a chain the device has returned.
type Used struct {
	Head uint16 // the id Add returned
	Len  uint32 // bytes written by the device, clamped to the writable length posted
}

// Stats counts what the queue has seen of the device.
type Stats struct {
	Added, Used uint64
	Clamped     uint64 // used lengths larger than posted, clamped
	Violations  uint64 // protocol violations detected
}

var (
	// ErrFull means there are not enough free descriptors for the chain.
	ErrFull = errors.New("ring: queue full")
	// ErrDeviceProtocol is matched (errors.Is) by every violation of the
	// split-ring rules by the device.
	ErrDeviceProtocol = errors.New("ring: device protocol violation")
)

// Queue is the driver side of one split virtqueue.
// (Signatures below are the contract; bodies are being written.)
type Queue struct {
	cfg Config
	mem []dma.Region
}

// New allocates and zeroes the queue's memory from alloc and returns the queue.
func New(alloc dma.Allocator, cfg Config) (*Queue, error) {
	return nil, errors.New("ring: not implemented yet")
}

// Size returns the number of descriptors.
func (q *Queue) Size() uint16 { return q.cfg.Size }

// DescAddr, DriverAddr and DeviceAddr return the device addresses of the
// descriptor table, the driver (avail) area and the device (used) area. For
// the legacy layout DescAddr is the start of the block (QUEUE_PFN << 12).
func (q *Queue) DescAddr() uint64   { return 0 }
func (q *Queue) DriverAddr() uint64 { return 0 }
func (q *Queue) DeviceAddr() uint64 { return 0 }

// Add writes a chain (device-readable segments first) and returns its head.
// The chain is not visible to the device until Publish. ErrFull if there are
// not enough free descriptors.
func (q *Queue) Add(segs []Segment) (head uint16, err error) { return 0, ErrFull }

// Publish makes every chain added since the last Publish available with one
// index update and reports whether the device must be notified.
func (q *Queue) Publish() (notify bool) { return false }

// Pop returns the next used chain and frees its descriptors. ok is false when
// nothing is pending. A device protocol violation is returned as an error
// matching ErrDeviceProtocol, and the queue stays broken until Reset.
func (q *Queue) Pop() (u Used, ok bool, err error) { return Used{}, false, nil }

// DisableInterrupts asks the device not to interrupt for used buffers.
func (q *Queue) DisableInterrupts() {}

// EnableInterrupts asks for an interrupt at the next used buffer and reports
// whether used buffers are already pending (then the caller must Pop again).
func (q *Queue) EnableInterrupts() (pending bool) { return false }

// NumFree returns the number of free descriptors.
func (q *Queue) NumFree() int { return 0 }

// InFlight returns the number of chains added and not yet returned.
func (q *Queue) InFlight() int { return 0 }

// InFlightHeads calls fn for every chain still owned by the device.
func (q *Queue) InFlightHeads(fn func(head uint16)) {}

// Reset forgets every in-flight chain and re-zeroes the rings. Call it only
// after the device has been reset (or the queue reset), never on a live queue.
func (q *Queue) Reset() {}

// Stats returns the queue's counters.
func (q *Queue) Stats() Stats { return Stats{} }

// Close frees the queue's memory.
func (q *Queue) Close() error { return nil }
