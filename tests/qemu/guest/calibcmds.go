package main

// The benchmark's calibration of the guest: what a system call, a copy, a
// hop through a pipe or a Unix socket, and a process or thread ping-pong
// cost in this boot.

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// calib measures, in this boot, the costs a relay is made of, and prints
// them as key=value:
//
//	getppid_us            one getppid(2)
//	copy_us_per_kib       copy() of a 64 KiB buffer, per KiB
//	pipecopy_us_per_kib   64 KiB written into a pipe and read back, per KiB
//	unixcopy_us_per_kib   the same through a Unix stream socketpair: the
//	                      kernel copies (and buffers) of one hop through a
//	                      socket, which a relay adds to every byte
//	proc_unix_p50_us      1-byte round trip between two processes over a
//	                      Unix stream socket (socketpair), median
//	proc_pipe_p50_us      the same over two pipes
//	proc_unix_raw_p50_us  proc_unix with both sides on raw system calls
//	                      (rawFD), which Go's runtime does not see: what a
//	                      C program pays (the relay floor's figure)
//	thread_unix_p50_us    the same between two threads of this process
//	thread_pipe_p50_us
//	proc_unix_go_p50_us   proc_unix with both sides reading and writing
//	                      through Go's poller (net.Conn), as the
//	                      benchmark's clients and a Go relay do
//
// Each ping-pong also prints its mean (…_mean_us). Except for the last,
// the fds are blocking and both sides use plain read(2) and write(2), so
// the figures are the kernel's and the CPU's, not Go's poller's; but
// only proc_unix_raw keeps Go's runtime out entirely (Go's system call
// wrappers hand the P over in a blocking call and wake its sysmon, which
// on one vCPU adds process switches and noise: 433 µs before a boot's
// rounds and 996 µs after them, against 128 and 220 µs on raw calls).
func calib(args []string) error {
	if len(args) != 2 {
		return errors.New("usage: calib PINGS ITERATIONS")
	}
	pings, err1 := strconv.Atoi(args[0])
	iters, err2 := strconv.Atoi(args[1])
	if err := errors.Join(err1, err2); err != nil || pings <= 0 || iters <= 0 {
		return fmt.Errorf("bad counts %q", args)
	}
	// Two Ps, so that two goroutines locked to their threads can both sit
	// in a blocking read on one vCPU.
	runtime.GOMAXPROCS(max(2, runtime.GOMAXPROCS(0)))
	var out []string
	put := func(k string, v float64) { out = append(out, fmt.Sprintf("%s=%.3f", k, v)) }

	t0 := time.Now()
	for range iters {
		unix.Getppid()
	}
	put("getppid_us", float64(time.Since(t0))/1e3/float64(iters))

	src, dst := make([]byte, 64<<10), make([]byte, 64<<10)
	for i := range src {
		src[i] = byte(i)
	}
	copies := max(iters/10, 1)
	t0 = time.Now()
	for range copies {
		copy(dst, src)
		src[0]++
	}
	put("copy_us_per_kib", float64(time.Since(t0))/1e3/float64(copies)/64)

	var p [2]int
	if err := unix.Pipe(p[:]); err != nil {
		return err
	}
	us, err := hopCopy(p, src, dst, copies)
	if err != nil {
		return err
	}
	put("pipecopy_us_per_kib", us)
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	if us, err = hopCopy([2]int{sp[0], sp[1]}, src, dst, copies); err != nil {
		return err
	}
	put("unixcopy_us_per_kib", us)

	for _, c := range []struct {
		name   string
		proc   bool
		socket bool
	}{
		{"proc_unix", true, true},
		{"proc_pipe", true, false},
		{"thread_unix", false, true},
		{"thread_pipe", false, false},
	} {
		rtts, err := pingPeer(pings, c.proc, c.socket, false)
		if err != nil {
			return fmt.Errorf("%s: %w", c.name, err)
		}
		p50, mean := medianMean(rtts)
		put(c.name+"_p50_us", p50)
		put(c.name+"_mean_us", mean)
	}
	rtts, err := pingPeer(pings, true, true, true)
	if err != nil {
		return fmt.Errorf("proc_unix_raw: %w", err)
	}
	p50, mean := medianMean(rtts)
	put("proc_unix_raw_p50_us", p50)
	put("proc_unix_raw_mean_us", mean)
	rtts, err = pingPollerPeer(pings)
	if err != nil {
		return fmt.Errorf("proc_unix_go: %w", err)
	}
	p50, mean = medianMean(rtts)
	put("proc_unix_go_p50_us", p50)
	put("proc_unix_go_mean_us", mean)
	fmt.Fprintln(stdout, strings.Join(out, " "))
	return nil
}

// calibProc measures only proc_unix_raw (calib's process ping-pong over a
// Unix stream socket on raw system calls), PINGS round trips, and prints
// its proc_unix_raw_p50_us and proc_unix_raw_mean_us: the benchmark takes it between
// rounds, so that each round has a relay floor of its own moment (the
// host's speed drifts within a boot, up to 2× between the calibrations
// before and after the rounds).
func calibProc(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: calib-proc PINGS")
	}
	pings, err := strconv.Atoi(args[0])
	if err != nil || pings <= 0 {
		return fmt.Errorf("bad count %q", args[0])
	}
	// As calib: the same runtime setting, so that the figure is the same
	// measurement.
	runtime.GOMAXPROCS(max(2, runtime.GOMAXPROCS(0)))
	rtts, err := pingPeer(pings, true, true, true)
	if err != nil {
		return fmt.Errorf("proc_unix_raw: %w", err)
	}
	p50, mean := medianMean(rtts)
	fmt.Fprintf(stdout, "proc_unix_raw_p50_us=%.3f proc_unix_raw_mean_us=%.3f\n", p50, mean)
	return nil
}

// hopCopy writes src into fds[1] and reads it back from fds[0] as dst,
// copies times, closes both and returns the time per KiB in µs.
func hopCopy(fds [2]int, src, dst []byte, copies int) (float64, error) {
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	t0 := time.Now()
	for range copies {
		if err := writeFull(fds[1], src); err != nil {
			return 0, err
		}
		if err := readFull(fds[0], dst); err != nil {
			return 0, err
		}
	}
	return float64(time.Since(t0)) / 1e3 / float64(copies) / float64(len(src)>>10), nil
}

// pingPeer sends one byte and waits for it to come back, count times,
// with a peer that echoes: another process (calib-peer) or a thread of
// this one; over a socketpair or two pipes. It returns each round trip in
// µs.
func pingPeer(count int, proc, socket, raw bool) ([]float64, error) {
	// mine: the fds this side reads and writes; theirs: the peer's.
	var mine, theirs [2]int
	if socket {
		sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return nil, err
		}
		mine, theirs = [2]int{sp[0], sp[0]}, [2]int{sp[1], sp[1]}
	} else {
		var a, b [2]int // a: this side → peer, b: peer → this side
		if err := unix.Pipe2(a[:], unix.O_CLOEXEC); err != nil {
			return nil, err
		}
		if err := unix.Pipe2(b[:], unix.O_CLOEXEC); err != nil {
			return nil, err
		}
		mine, theirs = [2]int{b[0], a[1]}, [2]int{a[0], b[1]}
	}
	closeAll := func(fds [2]int) {
		unix.Close(fds[0])
		if fds[1] != fds[0] {
			unix.Close(fds[1])
		}
	}
	var wait func() error
	if proc {
		in := os.NewFile(uintptr(theirs[0]), "peer-in")
		outf := in
		if theirs[1] != theirs[0] {
			outf = os.NewFile(uintptr(theirs[1]), "peer-out")
		}
		peerArgs := []string{"calib-peer"}
		if raw {
			peerArgs = append(peerArgs, "raw")
		}
		cmd := exec.Command("/proc/self/exe", peerArgs...)
		cmd.Args[0] = "vsguest"
		cmd.ExtraFiles = []*os.File{in, outf} // fd 3 and fd 4
		cmd.Stderr = os.Stderr
		err := cmd.Start()
		in.Close()
		outf.Close() // a second Close of the same file only errs
		if err != nil {
			closeAll(mine)
			return nil, err
		}
		wait = cmd.Wait
	} else {
		done := make(chan error, 1)
		go func() {
			runtime.LockOSThread()
			done <- echoFDs(theirs[0], theirs[1], raw)
			closeAll(theirs)
		}()
		wait = func() error { return <-done }
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	rtts := make([]float64, count)
	b := []byte{0}
	var err error
	for i := range count {
		t0 := time.Now()
		if err = writeAll(mine[1], b, raw); err != nil {
			break
		}
		if err = readAll(mine[0], b, raw); err != nil {
			break
		}
		rtts[i] = float64(time.Since(t0)) / 1e3
	}
	closeAll(mine) // the peer sees end of file
	return rtts, errors.Join(err, wait())
}

// pingPollerPeer is pingPeer between two processes over a socketpair,
// both sides going through Go's poller.
func pingPollerPeer(count int) ([]float64, error) {
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	theirs := os.NewFile(uintptr(sp[1]), "peer")
	cmd := exec.Command("/proc/self/exe", "calib-peer", "poller")
	cmd.Args[0] = "vsguest"
	cmd.ExtraFiles = []*os.File{theirs}
	cmd.Stderr = os.Stderr
	err = cmd.Start()
	theirs.Close()
	mine := os.NewFile(uintptr(sp[0]), "mine")
	defer mine.Close()
	if err != nil {
		return nil, err
	}
	c, err := net.FileConn(mine) // a non-blocking duplicate in the poller
	if err != nil {
		return nil, errors.Join(err, cmd.Wait())
	}
	rtts := make([]float64, count)
	b := []byte{0}
	for i := range count {
		t0 := time.Now()
		if _, err = c.Write(b); err != nil {
			break
		}
		if _, err = io.ReadFull(c, b); err != nil {
			break
		}
		rtts[i] = float64(time.Since(t0)) / 1e3
	}
	c.Close()
	mine.Close() // the peer sees end of file
	return rtts, errors.Join(err, cmd.Wait())
}

// calibPeer is the other process of calib's process ping-pongs: it echoes
// what it reads on fd 3 to fd 4 until end of file; with "poller", what it
// reads on the socket at fd 3 back to it, through Go's poller.
func calibPeer(args []string) error {
	if len(args) == 1 && args[0] == "poller" {
		c, err := net.FileConn(os.NewFile(3, "peer"))
		if err != nil {
			return err
		}
		defer c.Close()
		buf := make([]byte, 64)
		for {
			n, err := c.Read(buf)
			if n > 0 {
				if _, werr := c.Write(buf[:n]); werr != nil {
					return werr
				}
			}
			if err != nil {
				return nil // end of file: the ping-pong is over
			}
		}
	}
	raw := len(args) == 1 && args[0] == "raw"
	if raw {
		runtime.LockOSThread()
	}
	return echoFDs(3, 4, raw)
}

// echoFDs writes to out what it reads from in until end of file; with
// raw, through raw system calls (rawFD) that Go's runtime does not see,
// as a C program would.
func echoFDs(in, out int, raw bool) error {
	buf := make([]byte, 64)
	for {
		var n int
		var err error
		if raw {
			n, err = rawFD(in).Read(buf)
			if err == io.EOF {
				return nil
			}
		} else {
			n, err = unix.Read(in, buf)
		}
		if n == 0 || errors.Is(err, unix.EPIPE) || errors.Is(err, unix.ECONNRESET) {
			return nil
		}
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return err
		}
		if err := writeAll(out, buf[:n], raw); err != nil {
			return err
		}
	}
}

// writeAll is writeFull, or with raw rawFD's Write.
func writeAll(fd int, b []byte, raw bool) error {
	if !raw {
		return writeFull(fd, b)
	}
	_, err := rawFD(fd).Write(b)
	return err
}

// readAll is readFull, or with raw the same through rawFD's Read.
func readAll(fd int, b []byte, raw bool) error {
	if !raw {
		return readFull(fd, b)
	}
	for len(b) > 0 {
		n, err := rawFD(fd).Read(b)
		if err == io.EOF {
			return io.ErrUnexpectedEOF
		}
		if err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

func writeFull(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

func readFull(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := unix.Read(fd, b)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return io.ErrUnexpectedEOF
		}
		b = b[n:]
	}
	return nil
}

func medianMean(v []float64) (p50, mean float64) {
	s := slices.Clone(v)
	slices.Sort(s)
	var sum float64
	for _, x := range s {
		sum += x
	}
	return s[len(s)/2], sum / float64(len(s))
}
