package vfio

import (
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// rawIoctl is the one place a VFIO request reaches the kernel. arg, when
// not nil, is the request's argument buffer (its first byte's address is
// passed, converted inside the Syscall expression as unsafe.Pointer rules
// require); otherwise val is passed by value. The errno is returned as an
// error and never leaves the package unwrapped.
func rawIoctl(fd int, req uint, arg []byte, val uintptr) (int, error) {
	var r uintptr
	var e unix.Errno
	if arg != nil {
		r, _, e = unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(unsafe.Pointer(unsafe.SliceData(arg))))
		runtime.KeepAlive(arg)
	} else {
		r, _, e = unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), val)
	}
	if e != 0 {
		return -1, e
	}
	return int(r), nil
}

// addrOf returns the virtual address of b's first byte, the vaddr
// VFIO_IOMMU_MAP_DMA maps. b is always an mmap'd chunk outside the Go heap,
// so the address is stable.
func addrOf(b []byte) uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(b))) }
