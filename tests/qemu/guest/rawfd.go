package main

import (
	"io"
	"os"

	"golang.org/x/sys/unix"
)

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
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if fi.Mode()&os.ModeSocket == 0 {
		fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
		return rawFD(fd), err
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return rawFD(fd), nil
}

func (f rawFD) Read(b []byte) (int, error)  { return f.call(unix.SYS_READ, b) }
func (f rawFD) Write(b []byte) (int, error) { return f.call(unix.SYS_WRITE, b) }
func (f rawFD) Close() error                { return unix.Close(int(f)) }
