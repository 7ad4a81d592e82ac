// Package qemu boots real Linux guests under QEMU (TCG) and checks vserial
// and the in-kernel virtio_console driver from the host side.
package qemu
