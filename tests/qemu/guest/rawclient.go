package main

// The benchmark's C-like clients: a port's socket or device node on a
// blocking descriptor, without Go's poller. Clients of a guest agent are
// mostly C programs (qemu-ga, socat, shell tools); a Go client's runtime
// threads wake around each call on the poller, and on one vCPU each such
// wake-up during a relay's transfer or round trip is a process switch.

import (
	"io"
	"os"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/vserial/vserial/internal/rawio"
	"github.com/vserial/vserial/tests/qemu/internal/wire"
)

// openClient opens path with openPath or, with raw and unless path is the
// in-process library's (vserial:), as a blocking rawFD; then the calling
// goroutine stays locked to its thread (the built-ins run one per
// process, so it is never unlocked).
func openClient(path string, raw bool) (io.ReadWriteCloser, error) {
	if !raw || strings.HasPrefix(path, wire.VserialPrefix) {
		return openPath(path)
	}
	runtime.LockOSThread()
	return openRaw(path)
}

// rawFD is a blocking descriptor read and written with raw system calls,
// which Go's runtime does not see: no netpoller, and no wake-up of the
// runtime's sysmon thread around each call. It stands for a client
// written in C (qemu-ga, socat, a shell tool) in the round-trip
// benchmark: on one vCPU every extra thread of the client that wakes
// during a round trip costs a process switch with the relay. Only for a
// single goroutine locked to its thread.
type rawFD int

// openRaw opens path (a Unix socket or a device node) as a blocking rawFD.
func openRaw(path string) (io.ReadWriteCloser, error) {
	fd, err := openBlocking(path)
	if err != nil {
		return nil, err
	}
	return rawFD(fd), nil
}

// openBlocking opens path (a Unix socket or a device node) as a blocking
// descriptor.
func openBlocking(path string) (int, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return -1, err
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// openThreaded opens path with openPath or, with raw and unless path is
// the in-process library's, as a blocking *os.File: Go then reads and
// writes it with ordinary blocking system calls, each goroutine on a
// thread of its own while it waits, as a C program with one thread per
// descriptor would (for the clients of several ports at once, where
// rawFD's calls would hold the runtime's only P on one vCPU).
func openThreaded(path string, raw bool) (io.ReadWriteCloser, error) {
	if !raw || strings.HasPrefix(path, wire.VserialPrefix) {
		return openPath(path)
	}
	fd, err := openBlocking(path)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), path), nil
}

// Read is one raw read(2), again on EINTR; 0 bytes is io.EOF.
func (f rawFD) Read(b []byte) (int, error) {
	for {
		n, e := rawio.Read(int(f), b)
		switch {
		case e == unix.EINTR:
			continue
		case e != 0:
			return 0, e
		case n == 0 && len(b) > 0:
			return 0, io.EOF
		}
		return n, nil
	}
}

// Write writes all of b with raw writev(2) calls of one buffer, again on
// EINTR and after a short write (a port's device node takes at most 32 KiB
// per call).
func (f rawFD) Write(b []byte) (int, error) {
	var iov rawio.Iovecs
	done := 0
	for done < len(b) {
		n, e := iov.Writev(int(f), [][]byte{b[done:]})
		switch {
		case e == unix.EINTR:
			continue
		case e != 0:
			return done, e
		}
		done += n
	}
	return done, nil
}

func (f rawFD) Close() error { return unix.Close(int(f)) }
