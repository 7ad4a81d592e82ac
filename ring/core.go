package ring

import (
	"errors"
	"fmt"

	"github.com/vserial/vserial/dma"
)

// core is what the split Queue and the Packed queue share: the
// configuration, the memory and its allocator, the descriptor counters,
// the broken and closed state, and the accessors that read them. Both
// embed it; none of it is memory the device sees.
type core struct {
	cfg   Config
	mem   []dma.Region
	alloc dma.Allocator

	numFree  int // free descriptors (ring slots for Packed)
	inFlight int // chains added and not yet returned

	broken error // the protocol violation that broke the queue, ErrClosed after Close
	stats  Stats
	closed bool
}

// Size returns the number of descriptors.
func (q *core) Size() uint16 { return q.cfg.Size }

// NumFree returns the number of free descriptors.
func (q *core) NumFree() int { return q.numFree }

// InFlight returns the number of chains added and not yet returned.
func (q *core) InFlight() int { return q.inFlight }

// Err returns the protocol violation that broke the queue (ErrClosed after
// Close), or nil.
func (q *core) Err() error { return q.broken }

// Stats returns the queue's counters.
func (q *core) Stats() Stats { return q.stats }

// violate records a device protocol violation; the queue stays broken until
// Reset.
func (q *core) violate(what string, v uint64) {
	q.stats.Violations++
	q.broken = &ProtocolError{What: what, Value: v}
}

// allocate allocates size bytes, recording the region so Close frees it
// even when the length is wrong.
func (q *core) allocate(size, align int) (dma.Region, error) {
	r, err := q.alloc.Alloc(size, align)
	if err != nil {
		return dma.Region{}, fmt.Errorf("allocate %d bytes: %w", size, err)
	}
	q.mem = append(q.mem, r)
	if r.Len() != size {
		return dma.Region{}, fmt.Errorf("allocator returned %d bytes, asked for %d", r.Len(), size)
	}
	return r, nil
}

// free marks the queue closed and returns every region to the allocator
// (Close of either layout). done is true when it was closed already.
func (q *core) free() (done bool, err error) {
	if q.closed {
		return true, nil
	}
	q.closed = true
	q.broken = ErrClosed
	var errs []error
	for _, r := range q.mem {
		if err := q.alloc.Free(r); err != nil {
			errs = append(errs, err)
		}
	}
	q.mem = nil
	if err := errors.Join(errs...); err != nil {
		return false, fmt.Errorf("ring: close: %w", err)
	}
	return false, nil
}

// Layout selects the virtqueue format and, for the split ring, how its three
// parts sit in memory.
type Layout uint8

const (
	// Modern places the descriptor table, driver area and device area in
	// three separate allocations (virtio 1.x, spec 2.7).
	Modern Layout = iota
	// Legacy places them in one contiguous block with the used ring aligned
	// to 4096 (spec 2.7.2), addressed by QUEUE_PFN.
	Legacy
	// PackedRing is the packed virtqueue (spec 2.8, VIRTIO_F_RING_PACKED):
	// a descriptor ring and two event suppression structures, created with
	// NewPacked (modern transport only).
	PackedRing
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
	// ErrBadChain means Add was given a chain the split ring cannot carry:
	// no segments, a device-readable segment after a device-writable one, or
	// more than 2^32-1 bytes in total.
	ErrBadChain = errors.New("ring: invalid chain")
	// ErrClosed is returned by Add and Pop after Close.
	ErrClosed = errors.New("ring: queue closed")
)

// ProtocolError is a violation of the split-ring rules by the device. It
// matches ErrDeviceProtocol.
type ProtocolError struct {
	What  string // the rule that was broken, in the spec's words
	Value uint64 // the offending value the device wrote
}

func (e *ProtocolError) Error() string {
	return fmt.Sprintf("ring: device protocol violation: %s (%d)", e.What, e.Value)
}

// Is makes errors.Is(err, ErrDeviceProtocol) true.
func (e *ProtocolError) Is(target error) bool { return target == ErrDeviceProtocol }
