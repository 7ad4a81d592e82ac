// Package shm holds the only accessors that touch words of memory shared with
// a device atomically. Package ring (driver side) and package ringtest
// (device side) both use them, so the two sides synchronise through the same
// 32-bit atomics and the race detector sees every hand-off.
//
// Offsets must be multiples of 4 and the slice's first byte 4-byte aligned;
// callers check Aligned4 once, when they attach to the memory.
package shm
