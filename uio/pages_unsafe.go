package uio

import "unsafe"

// addrOf returns the virtual address of b's first byte, to look it up in
// /proc/self/pagemap. b is always an mmap'd region outside the Go heap, so
// the address is stable.
func addrOf(b []byte) uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(b))) }
