// Package vserial is the root of a guest-side, userspace virtio-console
// driver and agent. The code lives in the sub-packages; see README.md.
// This package holds only repository-wide tests: import layering, and
// "unsafe" imported only from files named *_unsafe.go (or *_unsafe_test.go).
package vserial
