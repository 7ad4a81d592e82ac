package shm

import (
	"sync/atomic"
	"unsafe"
)

// Load32 atomically loads the little-endian 32-bit word at b[off:off+4].
// The re-slice runs Go's bounds check before the pointer conversion.
func Load32(b []byte, off int) uint32 {
	w := b[off : off+4 : off+4]
	return atomic.LoadUint32((*uint32)(unsafe.Pointer(&w[0])))
}

// Store32 atomically stores v into the 32-bit word at b[off:off+4].
func Store32(b []byte, off int, v uint32) {
	w := b[off : off+4 : off+4]
	atomic.StoreUint32((*uint32)(unsafe.Pointer(&w[0])), v)
}

// Aligned4 reports whether b's first byte sits on a 4-byte boundary, which
// 32-bit atomics require. An empty slice is not aligned.
func Aligned4(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	return uintptr(unsafe.Pointer(unsafe.SliceData(b)))%4 == 0
}
