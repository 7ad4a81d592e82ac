package uio

import "unsafe"

// MMIO accessors. Each one is a single load or store of exactly the named
// width through a pointer into the mapping of resourceN:
//
//   - The bounds are checked by re-slicing before the cast, so a bad offset
//     panics in Go's bounds check rather than touching memory past the BAR
//     (BAR.check has already rejected it with an error; this is the second
//     line).
//   - The mapping is page-aligned and BAR.check requires off to be a
//     multiple of the width, so every access is naturally aligned.
//   - On amd64 a uint8/uint16/uint32 load compiles to one MOVBLZX/MOVWLZX/
//     MOVL and a store to one MOVB/MOVW/MOVL of that width, which QEMU
//     traps as one MMIO access of that size. TestMMIOAccessorsAreSingleMoves
//     disassembles the test binary and checks exactly this.
//   - go:noinline keeps each access a separate call, so the compiler cannot
//     merge, hoist out of a polling loop, or eliminate a load or store whose
//     value it thinks it knows: device registers change under us.
//   - go:norace: the race detector must not instrument device memory.
//
// sync/atomic is not used because it has no 8- and 16-bit operations, and a
// 32-bit atomic store (XCHG on amd64) buys nothing over a MOV for MMIO: the
// mapping is uncached and x86 does not reorder stores with other stores.

//go:noinline
//go:norace
func mmioRead8(m []byte, off uint64) uint8 {
	return *(*uint8)(unsafe.Pointer(unsafe.SliceData(m[off : off+1])))
}

//go:noinline
//go:norace
func mmioRead16(m []byte, off uint64) uint16 {
	return *(*uint16)(unsafe.Pointer(unsafe.SliceData(m[off : off+2])))
}

//go:noinline
//go:norace
func mmioRead32(m []byte, off uint64) uint32 {
	return *(*uint32)(unsafe.Pointer(unsafe.SliceData(m[off : off+4])))
}

//go:noinline
//go:norace
func mmioWrite8(m []byte, off uint64, v uint8) {
	*(*uint8)(unsafe.Pointer(unsafe.SliceData(m[off : off+1]))) = v
}

//go:noinline
//go:norace
func mmioWrite16(m []byte, off uint64, v uint16) {
	*(*uint16)(unsafe.Pointer(unsafe.SliceData(m[off : off+2]))) = v
}

//go:noinline
//go:norace
func mmioWrite32(m []byte, off uint64, v uint32) {
	*(*uint32)(unsafe.Pointer(unsafe.SliceData(m[off : off+4]))) = v
}
