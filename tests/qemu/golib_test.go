package qemu

import (
	"context"
	"fmt"
	"net"
	"path"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vserial/vserial/tests/qemu/internal/wire"
)

// The Go library guest test: examples/echo, a Go program built with
// package vserial, holds ports in-process in a real guest and echoes what
// the host sends, while another port of the same device is served as a
// socket by the same process (Options.SocketDir).

// EchoPath is where examples/echo lives in the guest.
const EchoPath = "/bin/vserial-echo"

// BuildEcho builds examples/echo for the guest.
func BuildEcho(t testing.TB) File {
	t.Helper()
	return File{Dst: EchoPath, Src: BuildGoBinary(t, "./examples/echo"), Mode: 0o755}
}

var (
	libNamed   = Port{Name: "org.vserial.lib", Nr: 1}
	libUnnamed = Port{Nr: 2} // the harness knows it as "port2"; the guest dials vport0p2
	libSocket  = Port{Name: "org.vserial.libsock", Nr: 3}
)

// TestGoLibraryEcho runs examples/echo on the uio binding.
func TestGoLibraryEcho(t *testing.T) {
	t.Parallel()
	runGoLibrary(t, Options{Ports: []Port{libNamed, libUnnamed, libSocket}, MaxPorts: 4}, "uio")
}

// TestGoLibraryEchoVFIO runs examples/echo on VFIO type1 behind QEMU's
// emulated IOMMU.
func TestGoLibraryEchoVFIO(t *testing.T) {
	t.Parallel()
	runGoLibrary(t, Options{IOMMU: true, Ports: []Port{libNamed, libUnnamed, libSocket}, MaxPorts: 4,
		Modules: []string{"vfio-pci", "vfio_iommu_type1"}}, "vfio")
}

func runGoLibrary(t *testing.T, opts Options, bind string) {
	opts.Files = append(opts.Files, BuildEcho(t))
	g := Boot(t, opts)
	ctx, cancel := context.WithTimeout(t.Context(), 8*time.Minute)
	defer cancel()
	unnamedID := g.mustPort(t, "port2").ID
	named := g.mustPort(t, libNamed.Name)
	// The host side of every port is there from the start.
	conn := g.DialPort(t, libNamed.Name)
	conn2 := g.DialPort(t, "port2")
	sockConn := g.DialPort(t, libSocket.Name)

	mark := g.QMP.Mark()
	echo, err := g.Start(ctx, EchoPath, "-socket-dir", AgentSocketDir, "-bind", bind, libNamed.Name, "vport0p2")
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	t.Cleanup(func() {
		if stopped || echo.Exited() {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = echo.Signal(ctx, 3) // SIGQUIT: goroutine stacks in the output
		out, err := echo.Wait(ctx)
		t.Logf("echo stopped with SIGQUIT (%v):\n%s", err, out)
	})
	// Names: the named port and the unnamed one (by its kernel name) are
	// opened for the host by Dial.
	openCtx, openCancel := context.WithTimeout(ctx, time.Minute)
	defer openCancel()
	for _, id := range []string{named.ID, unnamedID} {
		if _, err := g.QMP.WaitPortChange(openCtx, mark, id, true); err != nil {
			out := ""
			if echo.Exited() {
				out, _ = echo.Wait(ctx)
			}
			t.Fatalf("no VSERPORT_CHANGE open=true for %s: %v %s", id, err, out)
		}
	}
	if err := g.WaitPath(ctx, AgentSocket(libSocket.Name), time.Minute); err != nil {
		t.Fatalf("the port nobody dialed is not served as a socket: %v", err)
	}

	t.Run("both-ways-byte-exact", func(t *testing.T) {
		for i, n := range []int64{1, 4095, 4097, 64 << 10, 1 << 20, 8 << 20} {
			if err := echoed(ctx, t, conn, n, uint64(500+i)); err != nil {
				t.Fatalf("%s: %v", libNamed.Name, err)
			}
		}
		if err := echoed(ctx, t, conn2, 64<<10, 600); err != nil {
			t.Fatalf("vport0p2: %v", err)
		}
	})

	t.Run("socket-port-at-the-same-time", func(t *testing.T) {
		// 8 MiB through the in-process port while the socket port moves
		// 1 MiB each way through its own socket client.
		errc := make(chan error, 1)
		go func() { errc <- echoed(ctx, t, conn, 8<<20, 700) }()
		if err := both(ctx, t, g, sockConn, AgentSocket(libSocket.Name), 1<<20, 710); err != nil {
			t.Errorf("socket port: %v", err)
		}
		if err := <-errc; err != nil {
			t.Errorf("in-process port meanwhile: %v", err)
		}
	})

	t.Run("host-reconnect", func(t *testing.T) {
		// Everything the host sent came back before it leaves; the conn
		// stays with the guest program across the host's absence, and
		// after the host comes back the echo goes on with nothing lost,
		// duplicated or left over.
		if err := echoed(ctx, t, conn, 1<<20, 800); err != nil {
			t.Fatal(err)
		}
		conn.Close()
		time.Sleep(2 * time.Second) // the guest hears the host left
		if echo.Exited() {
			out, err := echo.Wait(ctx)
			t.Fatalf("echo exited while the host was away: %v %s", err, out)
		}
		conn = g.DialPort(t, libNamed.Name)
		for i, n := range []int64{1, 1 << 20} {
			if err := echoed(ctx, t, conn, n, uint64(810+i)); err != nil {
				t.Fatalf("after reconnecting: %v", err)
			}
		}
	})

	t.Run("close-tells-the-host", func(t *testing.T) {
		mark := g.QMP.Mark()
		if err := echo.Signal(ctx, 15); err != nil {
			t.Fatal(err)
		}
		out, err := echo.Wait(ctx)
		stopped = true
		if err != nil {
			t.Fatalf("echo after SIGTERM: %v\n%s", err, out)
		}
		for _, id := range []string{named.ID, unnamedID} {
			if _, err := g.QMP.WaitPortChange(ctx, mark, id, false); err != nil {
				t.Errorf("no VSERPORT_CHANGE open=false for %s after Close: %v", id, err)
			}
		}
		if !strings.Contains(out, "echo: serving "+libNamed.Name) {
			t.Errorf("echo's output lacks its serving line:\n%s", out)
		}
		t.Logf("echo's output:\n%s", out)
	})

	t.Run("guest-writes-wait-while-host-away", func(t *testing.T) {
		// Another Go program built with the package (the guest helper's
		// stream, on a vserial: path) takes the function echo gave back
		// and streams to the host: the host takes exactly the first part
		// and leaves; the program's Writes of the second part wait while
		// the host is away (nothing is discarded by QEMU), and the host
		// gets all of it, in order, once it is back.
		const n1, n2, seed = 1 << 20, 4 << 20, 41
		flag := "/tmp/golib-go"
		want, _ := patternSum(n1+n2, seed)
		addr := path.Base(findVirtioConsole(t, g))
		// (The host-reconnect case's connection closed with it.)
		conn := g.DialPort(t, libNamed.Name)
		proc, err := g.Start(ctx, "stream", wire.VserialPath(bind, addr, libNamed.Name, ""), strconv.Itoa(seed), strconv.Itoa(n1), flag, strconv.Itoa(n2))
		if err != nil {
			t.Fatal(err)
		}
		h, err := readPart(ctx, conn, n1)
		if err != nil {
			t.Fatalf("first part: %v", err)
		}
		conn.Close()
		time.Sleep(time.Second) // the guest hears the host left
		g.MustRun(t, "touch", flag)
		const awayFor = 3 * time.Second
		time.Sleep(awayFor)
		if proc.Exited() {
			out, err := proc.Wait(ctx)
			t.Fatalf("the guest program wrote %d bytes while the host was away (no backpressure; dropped?): %v %s", n2, err, out)
		}
		conn = g.DialPort(t, libNamed.Name)
		if err := h.add(ctx, conn, n2); err != nil {
			t.Fatalf("second part after the host came back: %v", err)
		}
		out, err := proc.Wait(ctx)
		if err != nil {
			t.Fatalf("guest program: %v %s", err, out)
		}
		if sent := ParseKV(out)["sha256"]; sent != want {
			t.Fatalf("guest program sent sha256 %s, want %s", sent, want)
		}
		if got := h.sum(); got != want {
			t.Errorf("host received sha256 %s, the guest sent %s: bytes lost or duplicated while the host was away", got, want)
		}
		if err := nothingMore(conn, 300*time.Millisecond); err != nil {
			t.Error(err)
		}
	})
}

// echoed writes n pattern bytes to conn while reading the echo back, and
// checks it byte for byte and that nothing more follows.
func echoed(ctx context.Context, t testing.TB, conn net.Conn, n int64, seed uint64) error {
	want, err := patternSum(n, seed)
	if err != nil {
		return err
	}
	werr := make(chan error, 1)
	t0 := time.Now()
	go func() { werr <- writePattern(ctx, conn, n, seed) }()
	got, err := readChecked(ctx, conn, n)
	if err != nil {
		return fmt.Errorf("echo of %d bytes: %w", n, err)
	}
	if err := <-werr; err != nil {
		return fmt.Errorf("host write of %d bytes: %w", n, err)
	}
	if got != want {
		return fmt.Errorf("echo of %d bytes has sha256 %s, sent %s", n, got, want)
	}
	if err := nothingMore(conn, 100*time.Millisecond); err != nil {
		return fmt.Errorf("after the echo of %d bytes: %w", n, err)
	}
	t.Logf("echo of %d bytes byte-exact%s", n, speed(n, Transfer{MBps: float64(n) / time.Since(t0).Seconds() / 1e6}))
	return nil
}

// mustPort returns the port the harness knows by key.
func (g *Guest) mustPort(t testing.TB, key string) Port {
	t.Helper()
	p, ok := g.Port(key)
	if !ok {
		t.Fatalf("no port %q", key)
	}
	return p
}
