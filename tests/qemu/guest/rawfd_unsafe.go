package main

import (
	"io"
	"unsafe"

	"golang.org/x/sys/unix"
)

// call makes one raw read or write (nr) of b on f, again on EINTR; a read
// of 0 bytes is io.EOF.
func (f rawFD) call(nr uintptr, b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	for {
		n, _, e := unix.RawSyscall(nr, uintptr(f), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
		switch {
		case e == unix.EINTR:
			continue
		case e != 0:
			return 0, e
		case n == 0 && nr == unix.SYS_READ:
			return 0, io.EOF
		}
		return int(n), nil
	}
}
