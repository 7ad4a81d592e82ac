// Package ring is the driver side of a virtio virtqueue living in
// device-visible memory: the split ring (Queue, spec 2.7) and the packed ring
// (Packed, spec 2.8, VIRTIO_F_RING_PACKED), with the same methods.
//
// A Queue keeps the free list of descriptors, builds chains, makes them
// available, reaps used chains and decides whether the device needs a
// notification. It never notifies and never waits: it returns "kick" and
// "pending" decisions to its caller (package driver), which owns doorbells
// and interrupts. It makes no system calls.
//
// Everything the device writes (used ids, used lengths, the used index, the
// avail_event word) is treated as hostile: it is checked before use and a
// violation is returned as a *ProtocolError matching ErrDeviceProtocol,
// never a panic or an out-of-range access. The queue then stays broken until
// Reset.
//
// # Who writes what
//
// Driver only: the descriptor table, the indirect tables, avail.ring[], the
// avail flags|idx word (driver area offset 0) and used_event. Device only: the
// used flags|idx word (device area offset 0), used.ring[] and avail_event.
// The driver keeps private copies of everything it needs (free list, chain
// tails, posted lengths, its own indices) and never reads its own shared
// words back, except to merge halves of a word it alone writes.
//
// # Memory ordering (spec 2.7.13, 2.7.14; VIRTIO-NOTES §4.9)
//
// Go has no fences and no 16-bit atomics, so every index and suppression word
// is accessed as a 32-bit sync/atomic word (package ring/internal/shm, the
// only unsafe code): avail flags|idx is published with one store, used
// flags|idx is read with one load, used_event and avail_event sit in the low
// half of a word of their own (2 padding bytes are allocated after each ring,
// 4 after the legacy block). Go's atomics are sequentially consistent, which
// gives the release, acquire and store→load orderings Linux gets from
// virtio_wmb, virtio_rmb and virtio_mb (checked with go tool objdump: the
// store is XCHGL on amd64 and STLRW on arm64, the load MOVL / LDARW). The
// used idx is read once per wakeup
// and cached until the entries it covers are consumed.
//
// Both split layouts are supported: Modern (three allocations) and Legacy (one
// block, used ring at the next 4096 boundary, spec 2.7.2). Only little-endian
// hosts are supported; New refuses others.
//
// # The packed ring (spec 2.8)
//
// Packed (NewPacked, Layout PackedRing) keeps the same promises: device
// writes are checked as for the split ring, each violation a
// *ProtocolError. How ownership, wrap counters, publishing and event
// suppression work is told at the top of packed.go.
//
// A Queue is not safe for concurrent use; its owner serialises access. The
// device may run concurrently on another CPU (or goroutine, see ringtest).
package ring
