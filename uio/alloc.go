package uio

import (
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"

	"github.com/vserial/vserial/dma"
)

// PageSource hands out chunks of zeroed, locked memory that the device can
// reach, each with the address the device must use for it: a physical
// address (hugepages, small pages) or an IOVA (package vfio maps chunks in
// the IOMMU). The allocator carves regions out of them; a region never
// spans two chunks.
type PageSource interface {
	// ChunkSize is the size of every chunk (2 MiB or 4 KiB).
	ChunkSize() int
	// Get maps one chunk.
	Get() (mem []byte, addr uint64, err error)
	// Put unmaps a chunk Get returned.
	Put(mem []byte) error
	// Describe names the source for log lines.
	Describe() string
}

// Allocator is the dma.Allocator of an opened function: device addresses
// are what its page source says (physical addresses under uio). It sub-allocates chunks from a page source (2 MiB
// hugepages, or 4 KiB pages as a fallback) first-fit with alignment, never
// across a chunk boundary, and maps another chunk when none has room.
// Chunks stay mapped until Close.
type Allocator struct {
	mu       sync.Mutex
	src      PageSource
	fallback PageSource // used instead of src if src cannot supply the first chunk
	log      *slog.Logger
	sources  []PageSource // src and fallback as created: Close releases both
	chunks   []*chunk
	live     map[uint64]allocation // by device address
	closed   bool
}

type chunk struct {
	mem  []byte
	phys uint64
	free []span // sorted by off, coalesced
}

type span struct{ off, n int }

type allocation struct {
	c      *chunk
	off, n int // n: rounded size held
	size   int // size asked for
}

// granule is the allocation granularity: sizes are rounded up to it so free
// spans stay 8-byte aligned.
const granule = 8

func NewAllocator(src, fallback PageSource, log *slog.Logger) *Allocator {
	if log == nil {
		log = slog.Default()
	}
	return &Allocator{src: src, fallback: fallback, sources: []PageSource{src, fallback}, log: log, live: map[uint64]allocation{}}
}

// ChunkSize is the largest allocation and alignment the allocator serves:
// 2 MiB with hugepages, 4096 with the small-page fallback.
func (a *Allocator) ChunkSize() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.src.ChunkSize()
}

// Alloc implements dma.Allocator: a zeroed region of size bytes whose
// physical address is a multiple of align, inside one chunk.
func (a *Allocator) Alloc(size, align int) (dma.Region, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	fail := func(err error) (dma.Region, error) {
		return dma.Region{}, &OpError{Op: fmt.Sprintf("dma alloc %d bytes", size), Err: err}
	}
	if a.closed {
		return fail(ErrClosed)
	}
	if size <= 0 {
		return fail(errors.New("size must be positive"))
	}
	if align <= 0 || align&(align-1) != 0 {
		return fail(fmt.Errorf("alignment %d is not a power of two", align))
	}
	if len(a.chunks) == 0 {
		// The first chunk decides the page size, so map it before checking.
		if err := a.grow(); err != nil {
			return fail(err)
		}
	}
	cs := a.src.ChunkSize()
	if size > cs || align > cs {
		return fail(fmt.Errorf("%w: %d bytes aligned to %d, %s serve at most %d", ErrTooBig, size, align, a.src.Describe(), cs))
	}
	n := (size + granule - 1) &^ (granule - 1)
	for {
		for _, c := range a.chunks {
			if off, ok := c.take(n, align); ok {
				return a.hand(c, off, n, size), nil
			}
		}
		if err := a.grow(); err != nil {
			return fail(err)
		}
	}
}

func (a *Allocator) hand(c *chunk, off, n, size int) dma.Region {
	b := c.mem[off : off+size : off+size]
	clear(b)
	addr := c.phys + uint64(off)
	a.live[addr] = allocation{c: c, off: off, n: n, size: size}
	return dma.NewRegion(b, addr)
}

// grow maps one more chunk, switching to the fallback source if the primary
// has no hugepage for the very first one.
func (a *Allocator) grow() error {
	mem, phys, err := a.src.Get()
	if errors.Is(err, ErrNoHugepages) && len(a.chunks) == 0 && a.fallback != nil {
		a.log.Warn("uio: dma: falling back to small pages",
			"from", a.src.Describe(), "to", a.fallback.Describe(), "err", err,
			"caveat", "4 KiB pages may be migrated by the kernel despite mlock; set vm.compact_unevictable_allowed=0 or reserve hugepages")
		a.src, a.fallback = a.fallback, nil
		mem, phys, err = a.src.Get()
	}
	if err != nil {
		return err
	}
	a.chunks = append(a.chunks, &chunk{mem: mem, phys: phys, free: []span{{0, len(mem)}}})
	return nil
}

// take carves n bytes whose physical address is aligned to align out of the
// first free span that has room. It edits the free list in place, so the
// steady state of alloc and free does not allocate.
func (c *chunk) take(n, align int) (int, bool) {
	for i, s := range c.free {
		pa := c.phys + uint64(s.off)
		start := s.off + int((-pa)&uint64(align-1))
		if p := c.phys + uint64(start); n <= pageBytes && p/pageBytes != (p+uint64(n)-1)/pageBytes {
			// Keep an area of at most a page inside one page: QEMU 7.2
			// behind a vIOMMU mistranslates a ring access that crosses a
			// page boundary (it took the offset into the ring for the
			// IOVA: a DMA fault at IOVA 0x48 in the IOMMU guest tests).
			start += int(pageBytes - p%pageBytes)
		}
		end := s.off + s.n
		if start+n > end {
			continue
		}
		left, right := start > s.off, start+n < end
		switch {
		case left && right:
			c.free = append(c.free, span{})
			copy(c.free[i+2:], c.free[i+1:])
			c.free[i] = span{s.off, start - s.off}
			c.free[i+1] = span{start + n, end - start - n}
		case left:
			c.free[i] = span{s.off, start - s.off}
		case right:
			c.free[i] = span{start + n, end - start - n}
		default:
			c.free = append(c.free[:i], c.free[i+1:]...)
		}
		return start, true
	}
	return 0, false
}

// pageBytes is the page an area of at most that size never crosses.
const pageBytes = 4096

// give returns [off, off+n) to the free list and merges it with neighbours.
func (c *chunk) give(off, n int) {
	i := sort.Search(len(c.free), func(i int) bool { return c.free[i].off > off })
	c.free = append(c.free, span{})
	copy(c.free[i+1:], c.free[i:])
	c.free[i] = span{off, n}
	if i+1 < len(c.free) && c.free[i].off+c.free[i].n == c.free[i+1].off {
		c.free[i].n += c.free[i+1].n
		c.free = append(c.free[:i+1], c.free[i+2:]...)
	}
	if i > 0 && c.free[i-1].off+c.free[i-1].n == c.free[i].off {
		c.free[i-1].n += c.free[i].n
		c.free = append(c.free[:i], c.free[i+1:]...)
	}
}

// Free implements dma.Allocator.
func (a *Allocator) Free(r dma.Region) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return &OpError{Op: "dma free", Err: ErrClosed}
	}
	al, ok := a.live[r.Addr()]
	if !ok || al.size != r.Len() {
		return &OpError{Op: "dma free", Err: fmt.Errorf("%#x (+%d): not a live allocation", r.Addr(), r.Len())}
	}
	delete(a.live, r.Addr())
	al.c.give(al.off, al.n)
	return nil
}

// Chunks reports how many chunks are mapped.
func (a *Allocator) Chunks() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.chunks)
}

// Close unmaps every chunk, then gives back the hugepages the allocator
// added to the pool (hugeSource.close). Regions handed out are invalid
// afterwards; the caller must have reset the device so it no longer writes
// to them.
func (a *Allocator) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return nil
	}
	a.closed = true
	var errs []error
	for _, c := range a.chunks {
		errs = append(errs, a.src.Put(c.mem))
	}
	a.chunks, a.live = nil, nil
	for _, src := range a.sources {
		h, ok := src.(*hugeSource)
		if !ok {
			continue
		}
		n, err := h.close()
		if err != nil {
			a.log.Warn("uio: dma: cannot give back the hugepages reserved", "file", h.nrFile, "err", err)
			errs = append(errs, err)
		} else if n > 0 {
			a.log.Info("uio: dma: hugepages given back", "pages", n, "file", h.nrFile)
		}
	}
	return errors.Join(errs...)
}

// prime maps the first chunk if there is none yet.
func (a *Allocator) Prime() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return ErrClosed
	}
	if len(a.chunks) > 0 {
		return nil
	}
	return a.grow()
}

// describe names the page source in use.
func (a *Allocator) Describe() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.src.Describe()
}
