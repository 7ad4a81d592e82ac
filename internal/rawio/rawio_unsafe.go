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

// EpollWait is epoll_pwait(2) on ep with no signal mask, waiting at most
// msec milliseconds (-1: no limit; callers on the hot path always pass a
// bound). Unlike unix.EpollWait it does not tell Go's scheduler that the
// thread blocks: the caller's P stays with it, which is what a loop that
// owns its thread wants for its short waits while traffic flows (the
// runtime's sysmon neither takes the P nor wakes to watch it). A signal
// (the runtime's preemption among them) ends the wait with EINTR.
func EpollWait(ep int, evs []unix.EpollEvent, msec int) (int, unix.Errno) {
	if len(evs) == 0 {
		return 0, unix.EINVAL
	}
	r, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(ep), uintptr(unsafe.Pointer(&evs[0])), uintptr(len(evs)), uintptr(msec), 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(r), 0
}

// Pread is pread(2) of len(b) bytes at off on fd: a register or
// configuration-space file, whose accesses never sleep (EINTR, which such
// a call cannot really see, is retried all the same).
func Pread(fd int, b []byte, off int64) (int, unix.Errno) {
	return positioned(unix.SYS_PREAD64, fd, b, off)
}

// Pwrite is pwrite(2) of b at off on fd, as Pread.
func Pwrite(fd int, b []byte, off int64) (int, unix.Errno) {
	return positioned(unix.SYS_PWRITE64, fd, b, off)
}

func positioned(trap uintptr, fd int, b []byte, off int64) (int, unix.Errno) {
	if len(b) == 0 {
		return 0, 0
	}
	for {
		r, _, e := unix.RawSyscall6(trap, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), uintptr(off), 0, 0)
		switch e {
		case 0:
			return int(r), 0
		case unix.EINTR:
			continue
		}
		return 0, e
	}
}

// Err is e as an error: nil for 0 (a zero Errno in an error interface
// would not be nil).
func Err(e unix.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}

// SchedSetAttr is sched_setattr(2) on the calling thread.
func SchedSetAttr(attr *unix.SchedAttr) unix.Errno {
	_, _, e := unix.RawSyscall(unix.SYS_SCHED_SETATTR, 0, uintptr(unsafe.Pointer(attr)), 0)
	return e
}

// EpollMod is epoll_ctl(2) EPOLL_CTL_MOD of fd in ep to events, with the
// event's data set to fd32 and pad (unix.EpollEvent's Fd and Pad).
func EpollMod(ep, fd int, events uint32, fd32, pad int32) unix.Errno {
	ev := unix.EpollEvent{Events: events, Fd: fd32, Pad: pad}
	_, _, e := unix.RawSyscall6(unix.SYS_EPOLL_CTL, uintptr(ep), unix.EPOLL_CTL_MOD, uintptr(fd), uintptr(unsafe.Pointer(&ev)), 0, 0)
	return e
}
