// Package dma describes memory that a device can reach: a Region pairs the
// CPU's view of some bytes with the address the device uses for them, and an
// Allocator hands out such regions.
//
// Package dma is a leaf: it makes no system calls and imports no other vserial
// package. Where the memory comes from (hugepages with physical addresses from
// /proc/self/pagemap, VFIO IOVA mappings, or the Go heap in tests) is the
// business of the allocator's implementation, not of this package.
package dma
