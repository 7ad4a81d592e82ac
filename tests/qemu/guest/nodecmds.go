package main

import (
	"errors"
	"fmt"
	"os"
	ossignal "os/signal"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// nodecheck makes the system calls a program makes on a device node
// (/dev/vport<D>p<ID> of the kernel's driver or vserial's CUSE node), with
// raw calls and no Go poller, and prints what each returned as KEY=RESULT
// (RESULT: a number, ok, or the errno's name), one line per call:
//
//	open                 open(O_RDWR)
//	busy                 open twice; the second's result
//	eagain               open(O_RDWR|O_NONBLOCK), read
//	eof                  open, read (blocking)
//	hold SECONDS         open, sleep, close (holds the port)
//	unplugged            open, wait until PATH is gone, then read, write, poll
//	eintr                open, read (blocking), a signal after 300 ms
//	fsync, ioctl         open, then fsync / ioctl(TCGETS)
//	poll                 open, poll(POLLIN|POLLOUT, 0): the revents
func nodecheck(args []string) error {
	if len(args) < 2 {
		return errors.New("usage: nodecheck PATH open|busy|eagain|eof|eintr|hold SECONDS|unplugged|fsync|ioctl|poll")
	}
	path, what := args[0], args[1]
	flags := unix.O_RDWR | unix.O_CLOEXEC
	if what == "eagain" {
		flags |= unix.O_NONBLOCK
	}
	fd, err := unix.Open(path, flags, 0)
	if what == "open" || err != nil {
		fmt.Fprintf(stdout, "open=%s\n", errName(err))
		if err == nil {
			unix.Close(fd)
		}
		return nil
	}
	defer unix.Close(fd)
	var b [4096]byte
	switch what {
	case "busy":
		fd2, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err == nil {
			unix.Close(fd2)
		}
		fmt.Fprintf(stdout, "second-open=%s\n", errName(err))
	case "eagain", "eof":
		n, err := unix.Read(fd, b[:])
		fmt.Fprintf(stdout, "read=%s\n", result(n, err))
	case "hold":
		if len(args) != 3 {
			return errors.New("usage: nodecheck PATH hold SECONDS")
		}
		s, err := strconv.ParseFloat(args[2], 64)
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, "holding")
		time.Sleep(time.Duration(s * float64(time.Second)))
	case "unplugged":
		// Hold the node open until its path is gone (the port was
		// unplugged), then read, write and poll the open descriptor.
		fmt.Fprintln(stdout, "holding")
		for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			if err := unix.Stat(path, new(unix.Stat_t)); err != nil {
				break
			}
			if time.Now().After(deadline) {
				return errors.New("the node is still there after 60s")
			}
		}
		n, err := unix.Read(fd, b[:])
		fmt.Fprintf(stdout, "read=%s\n", result(n, err))
		n, err = unix.Write(fd, []byte("x"))
		fmt.Fprintf(stdout, "write=%s\n", result(n, err))
		if err := unix.SetNonblock(fd, true); err != nil {
			return err
		}
		n, err = unix.Read(fd, b[:])
		fmt.Fprintf(stdout, "read-nonblock=%s\n", result(n, err))
		n, err = unix.Write(fd, []byte("x"))
		fmt.Fprintf(stdout, "write-nonblock=%s\n", result(n, err))
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN | unix.POLLOUT}}
		if _, err := unix.Poll(fds, 0); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "revents=%s\n", pollNames(fds[0].Revents))
	case "eintr":
		// A blocking read with nothing to read, hit by a signal whose
		// handler has SA_RESTART (Go installs its handlers so): the
		// thread's read returns what the node gives back.
		ossignal.Notify(make(chan os.Signal, 1), unix.SIGUSR1)
		runtime.LockOSThread()
		tid := unix.Gettid()
		go func() {
			time.Sleep(300 * time.Millisecond)
			unix.Tgkill(unix.Getpid(), tid, unix.SIGUSR1)
		}()
		n, err := unix.Read(fd, b[:])
		fmt.Fprintf(stdout, "read=%s\n", result(n, err))
	case "fsync":
		fmt.Fprintf(stdout, "fsync=%s\n", errName(unix.Fsync(fd)))
	case "ioctl":
		_, err := unix.IoctlGetTermios(fd, unix.TCGETS)
		fmt.Fprintf(stdout, "ioctl=%s\n", errName(err))
	case "poll":
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN | unix.POLLOUT}}
		n, err := unix.Poll(fds, 0)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "poll=%d revents=%s\n", n, pollNames(fds[0].Revents))
	default:
		return fmt.Errorf("nodecheck: unknown check %q", what)
	}
	return nil
}

func result(n int, err error) string {
	if err != nil {
		return errName(err)
	}
	return strconv.Itoa(n)
}

func errName(err error) string {
	if err == nil {
		return "ok"
	}
	var e unix.Errno
	if errors.As(err, &e) {
		if name := unix.ErrnoName(e); name != "" {
			return name
		}
	}
	return strings.ReplaceAll(err.Error(), " ", "_")
}

func pollNames(ev int16) string {
	var out []string
	for _, x := range []struct {
		bit  int16
		name string
	}{{unix.POLLIN, "IN"}, {unix.POLLOUT, "OUT"}, {unix.POLLHUP, "HUP"}, {unix.POLLERR, "ERR"}} {
		if ev&x.bit != 0 {
			out = append(out, x.name)
		}
	}
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, "|")
}
