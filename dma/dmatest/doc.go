// Package dmatest provides a dma.Allocator backed by the Go heap, for tests.
//
// Device addresses are synthetic and far from zero, with an unmapped gap after
// every allocation, so a test's fake device can only reach memory through
// Resolve, which answers for live allocations only: a dangling address, a
// stray pointer or a length that runs past the end fails loudly instead of
// reading someone else's bytes. Because the memory is ordinary Go memory, the
// race detector sees every access that the driver and a fake device make.
// Production code never imports it (layering_test.go).
package dmatest
