package main

import (
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/vserial/vserial/tests/qemu/internal/wire"
)

// TestMain lets calib's process ping-pongs re-execute this test binary as
// the peer (/proc/self/exe calib-peer), as the guest helper does.
func TestMain(m *testing.M) {
	if len(os.Args) >= 2 && os.Args[1] == "calib-peer" {
		if err := calibPeer(os.Args[2:]); err != nil {
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestPingpongSamples(t *testing.T) {
	out := captureStdout(t)
	sock, conns := peer(t)
	go func() {
		c := <-conns
		io.Copy(c, c)
	}()
	if err := pingpong([]string{sock, "7", "samples"}); err != nil {
		t.Fatal(err)
	}
	if s := kv(out.String())["samples_us"]; len(strings.Split(s, ",")) != 7 {
		t.Errorf("pingpong printed %q", out)
	}
}

// TestPingpongRaw runs the round trips on a blocking descriptor with raw
// system calls (a C-like client), in either order of the options, and
// checks that the echo really came back (a wrong byte fails pingpong).
func TestPingpongRaw(t *testing.T) {
	for _, opts := range [][]string{{"samples", "raw"}, {"raw", "samples"}} {
		out := captureStdout(t)
		sock, conns := peer(t)
		go func() {
			c := <-conns
			io.Copy(c, c)
		}()
		if err := pingpong(append([]string{sock, "9"}, opts...)); err != nil {
			t.Fatal(err)
		}
		if s := kv(out.String())["samples_us"]; len(strings.Split(s, ",")) != 9 {
			t.Errorf("pingpong %v printed %q", opts, out)
		}
	}
	if err := pingpong([]string{"/nonexistent", "1", "raw"}); err == nil {
		t.Error("raw pingpong on a missing path succeeded")
	}
	if err := pingpong([]string{"x", "1", "fast"}); err == nil {
		t.Error("an unknown option was accepted")
	}
}

// listeners stands in for n ports: n Unix sockets, each handing its first
// connection to f.
func listeners(t *testing.T, n int, f func(i int, c net.Conn)) []string {
	t.Helper()
	var paths []string
	for i := range n {
		p := filepath.Join(t.TempDir(), "p"+strconv.Itoa(i))
		l, err := net.Listen("unix", p)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		go func() {
			if c, err := l.Accept(); err == nil {
				defer c.Close()
				f(i, c)
			}
		}()
		paths = append(paths, p)
	}
	return paths
}

// TestMsinkAndMsource runs both through Go's poller and, with raw, on
// blocking descriptors.
func TestMsinkAndMsource(t *testing.T) {
	for _, opts := range [][]string{nil, {"raw"}} {
		out := captureStdout(t)
		const n = 200000
		paths := listeners(t, 3, func(_ int, c net.Conn) { io.CopyN(c, wire.Pattern(1), n) })
		if err := msink(append(append(opts, strconv.Itoa(n)), paths...)); err != nil {
			t.Fatal(opts, err)
		}
		if m := kv(out.String()); m["bytes"] != strconv.Itoa(3*n) || m["port_min_mbps"] == "" {
			t.Errorf("msink %v printed %q", opts, out)
		}

		out.Reset()
		got := make(chan int64, 3)
		paths = listeners(t, 3, func(_ int, c net.Conn) {
			k, _ := io.Copy(io.Discard, c)
			got <- k
		})
		if err := msource(append(append(opts, strconv.Itoa(n), "4"), paths...)); err != nil {
			t.Fatal(opts, err)
		}
		for range 3 {
			if k := <-got; k != n {
				t.Errorf("msource %v: a port got %d bytes, want %d", opts, k, n)
			}
		}
	}
}

func TestTrickleAndHold(t *testing.T) {
	out := captureStdout(t)
	got := make(chan int64, 1)
	paths := listeners(t, 1, func(_ int, c net.Conn) {
		k, _ := io.Copy(io.Discard, c)
		got <- k
	})
	if err := trickle([]string{paths[0], "20", "500"}); err != nil {
		t.Fatal(err)
	}
	if k := <-got; k != 20 {
		t.Errorf("trickle sent %d bytes, printed %q", k, out)
	}

	ready := filepath.Join(t.TempDir(), "ready")
	paths = listeners(t, 2, func(_ int, c net.Conn) { io.Copy(io.Discard, c) })
	if err := hold(append([]string{ready, "0"}, paths...)); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(ready); err != nil {
		t.Error(err)
	}
}

func TestProcsnapOfSelf(t *testing.T) {
	out := captureStdout(t)
	if err := procsnap([]string{strconv.Itoa(os.Getpid()), "-"}); err != nil {
		t.Fatal(err)
	}
	m := kv(out.String())
	// A Go test binary has more than one thread: vcsw_t1 is its sysmon's.
	for _, k := range []string{"utime_ticks", "stime_ticks", "sched_ns", "vcsw", "ivcsw", "vcsw_t1"} {
		if _, err := strconv.ParseUint(m[k], 10, 64); err != nil {
			t.Errorf("%s = %q in %q", k, m[k], out)
		}
	}
}

func TestWaitNoChild(t *testing.T) {
	if err := waitNoChild([]string{strconv.Itoa(os.Getpid()), "1"}); err != nil {
		t.Fatal(err)
	}
}
