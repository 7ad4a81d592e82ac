// Package dma describes memory that a device can reach: a Region pairs the
// CPU's view of some bytes with the address the device uses for them, and an
// Allocator hands out such regions.
//
// It is the vocabulary shared by the packages that meet at device memory:
// package uio implements Allocator (hugepages with physical addresses from
// /proc/self/pagemap, or IOVA mappings that package vfio makes), package
// dmatest implements it over the Go heap for tests, and packages ring and
// driver lay rings and buffers out in the regions they get.
//
// What an Allocator promises: Alloc returns zeroed memory, contiguous for
// the device, whose device address is a multiple of the requested
// alignment; the region stays valid until Free. Who then writes which bytes
// of a region is the business of the package that lays it out (package ring
// for the rings, package driver for the buffers), never of this one.
//
// Package dma is a leaf: it makes no system calls and imports no other
// vserial package.
package dma
