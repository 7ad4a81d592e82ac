package agent_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vserial/vserial/agent"
	"github.com/vserial/vserial/agent/agenttest"
)

// patience bounds every wait in these tests. It is a guard against hangs,
// not a speed requirement: nothing here is expected to take more than a
// fraction of it.
const patience = 30 * time.Second

func waitCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), patience)
	t.Cleanup(cancel)
	return ctx
}

// testLogger sends the agent's log lines to the test log.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(b []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// checkGoroutines fails the test if goroutines started during it outlive
// it. Close waits for the agent's goroutines, so only the runtime's own
// bookkeeping can lag; the loop gives it time to settle.
func checkGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(patience)
		for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		if n := runtime.NumGoroutine(); n > before {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Errorf("goroutine leak: %d before, %d after\n%s", before, n, buf)
		}
	})
}

// newAgent starts an agent in a fresh directory and closes it at the end of
// the test, checking for leaked goroutines.
func newAgent(t *testing.T, cfg agent.Config) *agent.Agent {
	t.Helper()
	checkGoroutines(t)
	if cfg.SocketDir == "" {
		cfg.SocketDir = filepath.Join(shortTempDir(t), "run")
	}
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	a, err := agent.New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

// shortTempDir returns a temporary directory with a short path: t.TempDir
// paths carry the test name and can exceed what sun_path holds.
func shortTempDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "vs")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func addPort(t *testing.T, a *agent.Agent, dev int, p *agenttest.Port) {
	t.Helper()
	if err := a.AddPort(dev, p); err != nil {
		t.Fatalf("AddPort(%d, %d): %v", dev, p.ID(), err)
	}
}

// status returns the agent's status of one port, or false.
func status(a *agent.Agent, dev int, id uint32) (agent.PortStatus, bool) {
	for _, s := range a.Status() {
		if s.Device == dev && s.ID == id {
			return s, true
		}
	}
	return agent.PortStatus{}, false
}

// waitStatus polls the agent until cond holds.
func waitStatus(t *testing.T, a *agent.Agent, what string, cond func([]agent.PortStatus) bool) []agent.PortStatus {
	t.Helper()
	deadline := time.Now().Add(patience)
	for {
		st := a.Status()
		if cond(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: status %+v", what, st)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func waitPort(t *testing.T, p *agenttest.Port, what string, cond func(agenttest.State) bool) agenttest.State {
	t.Helper()
	s, err := p.Wait(waitCtx(t), cond)
	if err != nil {
		t.Fatalf("waiting for %s: %v; fake port state: %+v", what, err, s)
	}
	return s
}

func dial(t *testing.T, path string) *net.UnixConn {
	t.Helper()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatalf("dial %s: %v", path, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// connectClient dials the port's socket and waits until the agent has
// opened the port for it.
func connectClient(t *testing.T, p *agenttest.Port, path string) *net.UnixConn {
	t.Helper()
	before := len(p.State().Opens)
	c := dial(t, path)
	waitPort(t, p, "PORT_OPEN 1", func(s agenttest.State) bool { return len(s.Opens) > before && s.GuestOpen })
	return c
}

// expectClosed checks that the agent closed c: a read returns EOF (or a
// reset) without data.
func expectClosed(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(patience))
	var b [16]byte
	n, err := c.Read(b[:])
	if n != 0 || err == nil {
		t.Fatalf("read from a connection the agent should have closed: n=%d err=%v", n, err)
	}
	if err != io.EOF && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("read from a connection the agent should have closed: %v, want EOF", err)
	}
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

func opensEqual(got []bool, want ...bool) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		if got[i] != want[i] {
			return false
		}
	}
	return true
}

func dialB(b *testing.B, path string) *net.UnixConn {
	b.Helper()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		b.Fatalf("dial %s: %v", path, err)
	}
	return c
}
