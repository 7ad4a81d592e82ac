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

// Word returns the 32-bit word at b[off:off+4] for repeated atomic access
// (atomic.LoadUint32 / StoreUint32) without a bounds check per access. The
// re-slice runs Go's bounds check before the pointer conversion, and the
// word must be 4-byte aligned: otherwise Word panics. The pointer is valid
// only while b's memory is; the caller drops it when the memory is freed.
func Word(b []byte, off int) *uint32 {
	w := b[off : off+4 : off+4]
	p := unsafe.Pointer(&w[0])
	if uintptr(p)%4 != 0 {
		panic("shm: word not 4-byte aligned")
	}
	return (*uint32)(p)
}
