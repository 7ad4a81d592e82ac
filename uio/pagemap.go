package uio

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
)

// /proc/self/pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst).
const (
	pagemapPresent = 1 << 63
	pagemapSwapped = 1 << 62
	pagemapPFN     = 1<<55 - 1
)

// physPages returns the physical address of each of the n pages starting at
// the page-aligned virtual address vaddr, read from pm (a pagemap file: one
// native-endian 64-bit entry per virtual page, at offset vaddr/page*8).
// A page that is not present, is swapped, or shows PFN 0 is an error; PFN 0
// on a present page means the reader lacks CAP_SYS_ADMIN (Linux 4.2+ hides
// PFNs from everyone else).
func physPages(pm io.ReaderAt, vaddr uintptr, n, page int) ([]uint64, error) {
	if page <= 0 || page&(page-1) != 0 || vaddr%uintptr(page) != 0 || n <= 0 {
		return nil, fmt.Errorf("pagemap: bad request: %d pages of %d bytes at %#x", n, page, vaddr)
	}
	buf := make([]byte, 8*n)
	off := int64(vaddr/uintptr(page)) * 8
	if _, err := pm.ReadAt(buf, off); err != nil {
		return nil, fmt.Errorf("pagemap: read %d entries at %#x: %w", n, off, err)
	}
	out := make([]uint64, n)
	for i := range out {
		e := binary.NativeEndian.Uint64(buf[8*i:])
		va := vaddr + uintptr(i*page)
		switch {
		case e&pagemapPresent == 0:
			return nil, fmt.Errorf("pagemap: page at %#x not present (entry %#x)", va, e)
		case e&pagemapSwapped != 0:
			return nil, fmt.Errorf("pagemap: page at %#x swapped out (entry %#x)", va, e)
		case e&pagemapPFN == 0:
			return nil, fmt.Errorf("%w: /proc/self/pagemap shows PFN 0 for %#x: needs CAP_SYS_ADMIN (run as root)", ErrNoPhysAddr, va)
		}
		out[i] = (e & pagemapPFN) * uint64(page)
	}
	return out, nil
}

// physContiguous returns the physical address of the first byte of the
// page-aligned range [vaddr, vaddr+size) after checking, page by page, that
// the range is physically contiguous.
func physContiguous(pm io.ReaderAt, vaddr uintptr, size, page int) (uint64, error) {
	if size <= 0 || size%page != 0 {
		return 0, fmt.Errorf("pagemap: size %d is not a positive multiple of %d", size, page)
	}
	pa, err := physPages(pm, vaddr, size/page, page)
	if err != nil {
		return 0, err
	}
	for i, p := range pa {
		if want := pa[0] + uint64(i*page); p != want {
			return 0, fmt.Errorf("pagemap: range at %#x not physically contiguous: page %d at %#x, want %#x", vaddr, i, p, want)
		}
	}
	return pa[0], nil
}

// physOf opens the pagemap file at path and calls physContiguous.
func physOf(path string, vaddr uintptr, size int) (uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("pagemap: %w", err)
	}
	defer f.Close()
	return physContiguous(f, vaddr, size, os.Getpagesize())
}
