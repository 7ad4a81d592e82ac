package rawio

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// MaxIov bounds the buffers one Readv or Writev moves: the driver hands at
// most 128 receive buffers (its queue size) and 32 transmit buffers at a
// time, well under Linux's UIO_MAXIOV (1024). Buffers past it are left for
// the caller's next call (a short count).
const MaxIov = 128

// Iovecs is the scratch space of one vectored call, kept by the caller
// between calls so that the hot path allocates nothing. It holds no
// reference to the buffers once a call returns.
type Iovecs [MaxIov]unix.Iovec

// Readv is readv(2) on fd into bufs (empty buffers skipped, at most MaxIov
// used). It returns 0 and the errno on failure.
func (v *Iovecs) Readv(fd int, bufs [][]byte) (int, unix.Errno) {
	return v.call(unix.SYS_READV, fd, bufs)
}

// Writev is writev(2) of bufs on fd, as Readv.
func (v *Iovecs) Writev(fd int, bufs [][]byte) (int, unix.Errno) {
	return v.call(unix.SYS_WRITEV, fd, bufs)
}

func (v *Iovecs) call(trap uintptr, fd int, bufs [][]byte) (int, unix.Errno) {
	n := 0
	for _, b := range bufs {
		if n == MaxIov {
			break
		}
		if len(b) == 0 {
			continue
		}
		v[n].Base = &b[0]
		v[n].SetLen(len(b))
		n++
	}
	if n == 0 {
		return 0, 0
	}
	r, _, e := unix.RawSyscall(trap, uintptr(fd), uintptr(unsafe.Pointer(&v[0])), uintptr(n))
	clear(v[:n]) // no references to the caller's (or the device's) memory after the call
	if e != 0 {
		return 0, e
	}
	return int(r), 0
}

// Read is read(2) on fd into b; 0 and no error for an empty b.
func Read(fd int, b []byte) (int, unix.Errno) {
	if len(b) == 0 {
		return 0, 0
	}
	r, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	if e != 0 {
		return 0, e
	}
	return int(r), 0
}

// EventfdAdd adds 1 to an eventfd's count (an 8-byte write).
func EventfdAdd(fd int) unix.Errno {
	v := uint64(1)
	_, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&v)), 8)
	return e
}

// EventfdDrain reads, and so resets, an eventfd's count (an 8-byte read).
func EventfdDrain(fd int) unix.Errno {
	var v uint64
	_, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&v)), 8)
	return e
}
