package dmatest

import (
	"errors"
	"testing"

	"github.com/vserial/vserial/dma"
)

func TestHeapResolvesOnlyLiveAllocations(t *testing.T) {
	h := NewHeap()
	a, err := h.Alloc(100, 4096)
	if err != nil {
		t.Fatal(err)
	}
	if a.Addr() < Base || a.Addr()%4096 != 0 {
		t.Fatalf("address %#x: want aligned and >= %#x", a.Addr(), uint64(Base))
	}
	b, err := h.Alloc(10, 16)
	if err != nil {
		t.Fatal(err)
	}
	if b.Addr() < a.Addr()+uint64(a.Len())+gap {
		t.Fatalf("no gap between %#x and %#x", a.Addr(), b.Addr())
	}
	got, err := h.Resolve(a.Addr()+10, 90)
	if err != nil {
		t.Fatal(err)
	}
	got[0] = 7
	if a.Bytes()[10] != 7 {
		t.Fatal("resolved bytes are not the allocation's bytes")
	}
	if _, err := h.Resolve(a.Addr()+10, 91); err == nil {
		t.Fatal("range past the end resolved")
	}
	if _, err := h.Resolve(a.Addr()+uint64(a.Len()), 1); err == nil {
		t.Fatal("address in the gap resolved")
	}
	if _, err := h.Resolve(0, 1); err == nil {
		t.Fatal("address zero resolved")
	}
	if err := h.Free(a); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Resolve(a.Addr(), 1); err == nil {
		t.Fatal("freed allocation resolved")
	}
	if err := h.Free(a); err == nil {
		t.Fatal("double free accepted")
	}
	if n, sz := h.Live(); n != 1 || sz != 10 {
		t.Fatalf("Live() = %d, %d; want 1, 10", n, sz)
	}
}

func TestHeapRejectsBadRequests(t *testing.T) {
	h := NewHeap()
	for _, c := range []struct{ size, align int }{{0, 8}, {-1, 8}, {8, 0}, {8, 3}, {8, 1 << 22}} {
		if _, err := h.Alloc(c.size, c.align); err == nil {
			t.Errorf("Alloc(%d, %d) succeeded", c.size, c.align)
		}
	}
}

func TestRegionSubIsBoundsChecked(t *testing.T) {
	r := dma.NewRegion(make([]byte, 64), 0x1000)
	s, err := r.Sub(16, 32)
	if err != nil || s.Addr() != 0x1010 || s.Len() != 32 {
		t.Fatalf("Sub(16, 32) = %#x/%d, %v", s.Addr(), s.Len(), err)
	}
	for _, c := range [][2]int{{-1, 1}, {0, 65}, {64, 1}, {65, 0}, {10, -1}} {
		if _, err := r.Sub(c[0], c[1]); !errors.Is(err, dma.ErrOutOfRange) {
			t.Errorf("Sub(%d, %d): err = %v, want ErrOutOfRange", c[0], c[1], err)
		}
	}
	if _, err := s.Sub(0, 33); err == nil {
		t.Error("sub-region grew past its parent")
	}
}
