package agent

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// The data pumps copy up to a few hundred KiB per readv/writev on sockets
// the Go poller has made non-blocking, so the calls never sleep, but under
// emulation they take far longer than the 20 µs after which the runtime's
// sysmon hands the caller's P to another thread (runtime.retake); on a
// one-CPU guest every transfer then pays for thread hand-offs. Raw system
// calls skip the scheduler's syscall bookkeeping: the P stays with the
// goroutine for the duration of the copy, as for any other CPU work.

// rawv runs readv(2) or writev(2) (trap) on fd over bufs, with the iovecs
// built in *iov (reused between calls). Empty buffers are skipped.
func rawv(trap uintptr, fd uintptr, bufs [][]byte, iov *[]unix.Iovec) (int, unix.Errno) {
	v := (*iov)[:0]
	for _, b := range bufs {
		if len(b) == 0 {
			continue
		}
		var e unix.Iovec
		e.Base = &b[0]
		e.SetLen(len(b))
		v = append(v, e)
	}
	*iov = v
	if len(v) == 0 {
		return 0, 0
	}
	n, _, errno := unix.RawSyscall(trap, fd, uintptr(unsafe.Pointer(&v[0])), uintptr(len(v)))
	clear(v) // no references to the caller's buffers between calls
	return int(n), errno
}

// rawRead is read(2) on fd into b without the scheduler's syscall state.
func rawRead(fd uintptr, b []byte) (int, unix.Errno) {
	if len(b) == 0 {
		return 0, 0
	}
	n, _, errno := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	return int(n), errno
}
