package main

// The round-trip client of the benchmarks: pingpong, on Go's poller or, as
// a client written in C would, on a blocking descriptor with raw calls.

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vserial/vserial/internal/rawio"
	"github.com/vserial/vserial/tests/qemu/internal/wire"
)

// pingpong sends one byte and waits for it to come back, COUNT times, and
// prints the round-trip statistics. The host side echoes. With "samples"
// it also prints every round trip, in µs (samples_us=12.3,45.6,...), so
// that the host can pool the samples of several runs. With "raw" it uses
// a blocking descriptor and raw system calls (rawFD), as a client
// written in C would, instead of Go's poller.
func pingpong(args []string) error {
	withSamples, raw := false, false
	for len(args) > 2 {
		switch args[len(args)-1] {
		case "samples":
			withSamples = true
		case "raw":
			raw = true
		default:
			return errors.New("usage: pingpong PATH COUNT [samples] [raw]")
		}
		args = args[:len(args)-1]
	}
	if len(args) != 2 {
		return errors.New("usage: pingpong PATH COUNT [samples] [raw]")
	}
	count, err := strconv.Atoi(args[1])
	if err != nil || count <= 0 {
		return fmt.Errorf("bad count %q", args[1])
	}
	open := openPath
	if raw && !strings.HasPrefix(args[0], wire.VserialPrefix) {
		open = openRaw
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
	}
	f, err := open(args[0])
	if err != nil {
		return err
	}
	defer f.Close()
	rtts := make([]time.Duration, count)
	var b [1]byte
	for i := range count {
		out := byte(i)
		t0 := time.Now()
		if _, err := f.Write([]byte{out}); err != nil {
			return fmt.Errorf("round %d: %w", i, err)
		}
		if _, err := io.ReadFull(f, b[:]); err != nil {
			return fmt.Errorf("round %d: %w", i, err)
		}
		rtts[i] = time.Since(t0)
		if b[0] != out {
			return fmt.Errorf("round %d: sent %#x, got %#x back", i, out, b[0])
		}
	}
	var sum time.Duration
	var samples []string
	for _, d := range rtts {
		sum += d
		if withSamples {
			samples = append(samples, strconv.FormatFloat(float64(d)/1e3, 'f', 1, 64))
		}
	}
	if withSamples {
		fmt.Fprintf(stdout, "samples_us=%s\n", strings.Join(samples, ","))
	}
	slices.Sort(rtts)
	us := func(d time.Duration) float64 { return float64(d) / 1e3 }
	fmt.Fprintf(stdout, "count=%d mean_us=%.1f p50_us=%.1f p99_us=%.1f max_us=%.1f\n",
		count, us(sum/time.Duration(count)), us(rtts[count/2]), us(rtts[(count*99)/100]), us(rtts[count-1]))
	return nil
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

// Write is one raw write(2) of b (a writev of one buffer), again on EINTR.
func (f rawFD) Write(b []byte) (int, error) {
	var iov rawio.Iovecs
	for {
		n, e := iov.Writev(int(f), [][]byte{b})
		switch {
		case e == unix.EINTR:
			continue
		case e != 0:
			return 0, e
		}
		return n, nil
	}
}

func (f rawFD) Close() error { return unix.Close(int(f)) }
