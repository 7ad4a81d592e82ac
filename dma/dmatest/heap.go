package dmatest

import (
	"fmt"
	"sort"
	"sync"

	"github.com/vserial/vserial/dma"
)

// Base is the first device address Heap hands out.
const Base = 0x7f_0000_0000

// gap is left unmapped after every allocation.
const gap = 0x1000

// Heap is a dma.Allocator over Go-heap memory. The zero value is not usable;
// call NewHeap.
type Heap struct {
	mu    sync.Mutex
	next  uint64
	live  []alloc // sorted by addr
	freed int
	bytes int
	peak  int // most bytes live at once
	limit int // 0: none; else Alloc fails beyond this many live bytes
}

type alloc struct {
	addr uint64
	buf  []byte
}

// NewHeap returns an empty heap allocator.
func NewHeap() *Heap { return &Heap{next: Base} }

// Alloc implements dma.Allocator.
func (h *Heap) Alloc(size, align int) (dma.Region, error) {
	if size <= 0 {
		return dma.Region{}, fmt.Errorf("dmatest: alloc %d bytes: size must be positive", size)
	}
	if align <= 0 || align&(align-1) != 0 || align > 1<<21 {
		return dma.Region{}, fmt.Errorf("dmatest: alloc: bad alignment %d", align)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.limit > 0 && h.bytes+size > h.limit {
		return dma.Region{}, fmt.Errorf("dmatest: alloc %d bytes: %d of the heap's limit of %d in use", size, h.bytes, h.limit)
	}
	addr := (h.next + uint64(align) - 1) &^ (uint64(align) - 1)
	buf := alignedBytes(size)
	h.next = addr + uint64(size) + gap
	h.live = append(h.live, alloc{addr: addr, buf: buf})
	h.bytes += size
	h.peak = max(h.peak, h.bytes)
	return dma.NewRegion(buf, addr), nil
}

// Free implements dma.Allocator.
func (h *Heap) Free(r dma.Region) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	i := h.find(r.Addr())
	if i < 0 || h.live[i].addr != r.Addr() || len(h.live[i].buf) != r.Len() {
		return fmt.Errorf("dmatest: free %#x (+%d): not a live allocation", r.Addr(), r.Len())
	}
	h.bytes -= len(h.live[i].buf)
	h.live = append(h.live[:i], h.live[i+1:]...)
	h.freed++
	return nil
}

// Resolve returns the n bytes at device address addr. It fails unless the
// whole range lies inside one live allocation.
func (h *Heap) Resolve(addr uint64, n int) ([]byte, error) {
	if n < 0 {
		return nil, fmt.Errorf("dmatest: resolve %#x: negative length %d", addr, n)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	i := h.find(addr)
	if i < 0 {
		return nil, fmt.Errorf("dmatest: resolve %#x (+%d): no live allocation there", addr, n)
	}
	a := h.live[i]
	off := addr - a.addr
	if uint64(n) > uint64(len(a.buf))-off {
		return nil, fmt.Errorf("dmatest: resolve %#x (+%d): runs past the end of the allocation at %#x (+%d)", addr, n, a.addr, len(a.buf))
	}
	return a.buf[off : off+uint64(n) : off+uint64(n)], nil
}

// Live reports how many allocations are outstanding and their total size.
func (h *Heap) Live() (count, bytes int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.live), h.bytes
}

// SetLimit makes Alloc fail once n bytes are live (0: no limit), as a
// machine runs out of memory: a test of a memory bound then fails instead
// of exhausting the machine running it.
func (h *Heap) SetLimit(n int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.limit = n
}

// Peak reports the most bytes that were live at once.
func (h *Heap) Peak() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.peak
}

// find returns the index of the live allocation containing addr, or -1.
func (h *Heap) find(addr uint64) int {
	i := sort.Search(len(h.live), func(i int) bool { return h.live[i].addr > addr }) - 1
	if i < 0 || addr >= h.live[i].addr+uint64(len(h.live[i].buf)) {
		return -1
	}
	return i
}
