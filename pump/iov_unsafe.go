package pump

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// maxIov bounds the buffers one readv or writev moves: the driver hands at
// most 128 receive buffers (its queue size) and 32 transmit buffers at a
// time, well under Linux's UIO_MAXIOV (1024).
const maxIov = 128

// rawv is readv(2) or writev(2) (nr) of bufs on fd, as a raw system call:
// it never blocks (fd is non-blocking), so the Go scheduler need not hear of
// it, and it allocates nothing (the iovecs live in iov). Buffers past maxIov
// are left for the next call.
func rawv(nr uintptr, fd int, bufs [][]byte, iov *[maxIov]unix.Iovec) (int, unix.Errno) {
	n := 0
	for _, b := range bufs {
		if n == maxIov {
			break
		}
		if len(b) == 0 {
			continue
		}
		iov[n].Base = &b[0]
		iov[n].SetLen(len(b))
		n++
	}
	if n == 0 {
		return 0, 0
	}
	r, _, e := unix.RawSyscall(nr, uintptr(fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(n))
	clear(iov[:n]) // no references to device memory after the call
	if e != 0 {
		return 0, e
	}
	return int(r), 0
}

// rawWrite8 adds 1 to an eventfd (8 bytes), as a raw system call.
func rawWrite8(fd int) unix.Errno {
	v := uint64(1)
	_, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&v)), 8)
	return e
}

// rawRead8 reads (and so resets) an eventfd's count, as a raw system call.
func rawRead8(fd int) unix.Errno {
	var v uint64
	_, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&v)), 8)
	return e
}
