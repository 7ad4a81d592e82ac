package dmatest

import "unsafe"

// alignedBytes returns size zeroed bytes whose first byte is 8-byte aligned,
// so that ring code may use 32-bit atomics on them as it does on mmap'd memory.
func alignedBytes(size int) []byte {
	words := make([]uint64, (size+7)/8)
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(words))), size)
}
