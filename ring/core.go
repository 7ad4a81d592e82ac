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
