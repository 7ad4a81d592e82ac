package dma

import (
	"errors"
	"fmt"
)

// ErrOutOfRange is returned when a sub-region does not lie inside its parent.
var ErrOutOfRange = errors.New("dma: range outside region")

// Region is a piece of device-visible memory: the bytes as the CPU sees them
// and the address the device uses for the first byte. The bytes are contiguous
// from the device's point of view as well as the CPU's.
type Region struct {
	buf  []byte
	addr uint64
}

// NewRegion pairs buf with the device address of buf[0]. It is meant for
// allocator implementations.
func NewRegion(buf []byte, addr uint64) Region {
	return Region{buf: buf, addr: addr}
}

// Bytes returns the CPU view of the region.
func (r Region) Bytes() []byte { return r.buf }

// Addr returns the device address of the first byte.
func (r Region) Addr() uint64 { return r.addr }

// Len returns the length of the region in bytes.
func (r Region) Len() int { return len(r.buf) }

// Sub returns the n bytes starting at off, checked against the region's bounds.
func (r Region) Sub(off, n int) (Region, error) {
	if off < 0 || n < 0 || off > len(r.buf) || n > len(r.buf)-off {
		return Region{}, fmt.Errorf("%w: [%d, +%d) of %d bytes", ErrOutOfRange, off, n, len(r.buf))
	}
	return Region{buf: r.buf[off : off+n : off+n], addr: r.addr + uint64(off)}, nil
}

// Allocator hands out zeroed device-visible memory.
type Allocator interface {
	// Alloc returns a zeroed region of size bytes whose device address is a
	// multiple of align (a power of two, at most the page size of the
	// implementation). The region is contiguous for the device.
	Alloc(size, align int) (Region, error)
	// Free returns a region obtained from Alloc. Using the region afterwards
	// is a bug; test allocators detect it.
	Free(Region) error
}
