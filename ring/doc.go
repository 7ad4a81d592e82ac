// Package ring is the driver side of a virtio split virtqueue (spec 2.7)
// living in device-visible memory.
//
// A Queue keeps the free list of descriptors, builds chains, makes them
// available, reaps used chains and decides whether the device needs a
// notification. It never notifies and never waits: it returns "kick" and
// "pending" decisions to its caller (package driver), which owns doorbells
// and interrupts. It makes no system calls.
//
// Everything the device writes (used ids, used lengths, the used index, the
// avail_event word) is treated as hostile: it is checked before use and a
// violation is returned as an error matching ErrDeviceProtocol, never a
// panic or an out-of-range access.
//
// A Queue is not safe for concurrent use; its owner serialises access.
package ring
