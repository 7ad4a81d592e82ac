package qemu

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestAgentModern runs vserial-agent on a modern-only device
// (disable-legacy=on, PCI device id 0x1043): the virtio 1.x capabilities
// transport instead of the legacy I/O BAR.
func TestAgentModern(t *testing.T) {
	t.Parallel()
	names := []string{"org.vserial.modern.0", "org.vserial.modern.1"}
	a := bootAgent(t, Options{Ports: []Port{{Name: names[0]}, {Name: names[1]}}, MaxPorts: 4, DisableLegacy: true}, names...)
	g := a.g
	ctx, cancel := context.WithTimeout(t.Context(), 8*time.Minute)
	defer cancel()

	t.Run("modern-device", func(t *testing.T) {
		fn := findVirtioConsole(t, g)
		id := strings.TrimSpace(g.MustRun(t, "cat", fn+"/device"))
		t.Logf("virtio-console function %s: device id %s", fn, id)
		if id != "0x1043" {
			t.Errorf("disable-legacy=on device has id %s, want the modern-only 0x1043", id)
		}
	})

	t.Run("data-both-ports", func(t *testing.T) {
		var wg sync.WaitGroup
		for i, name := range names {
			conn := g.DialPort(t, name)
			wg.Go(func() {
				for j, n := range []int64{1, 4<<10 + 1, 1 << 20, 8 << 20} {
					if err := both(ctx, t, g, conn, AgentSocket(name), n, uint64(10*i+j)); err != nil {
						t.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
	})

	t.Run("list-json", func(t *testing.T) {
		l, out, err := a.list(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("vserial-agent list --json:\n%s", out)
		if len(l.Functions) != 1 || l.Functions[0].Device != "1043" {
			t.Errorf("list functions = %+v, want one with device 1043", l.Functions)
		}
		for i, name := range names {
			p, ok := l.port(AgentSocket(name))
			if !ok || p.Name != name || p.ID != uint32(i+1) {
				t.Errorf("list port for %s: %+v (found %v)", name, p, ok)
				continue
			}
			// Every case above moved 1+4097+1 MiB+8 MiB each way.
			const want = 1 + 4<<10 + 1 + 1<<20 + 8<<20
			if p.BytesIn != want || p.BytesOut != want {
				t.Errorf("%s counters in=%d out=%d, want %d each", name, p.BytesIn, p.BytesOut, want)
			}
		}
	})

	t.Run("second-agent-refused", func(t *testing.T) {
		// A second agent on the same socket directory must give up (exit
		// 1) without disturbing the first.
		out, err := g.Run(ctx, AgentPath, "run", "--socket-dir", AgentSocketDir)
		var ee *ExitError
		if !errors.As(err, &ee) || ee.Code != 1 {
			t.Fatalf("second vserial-agent: %v, want exit status 1\n%s", err, out)
		}
		t.Logf("second agent refused: %s", lastLine(ee.Output))
		if a.proc.Exited() {
			t.Fatal("the first agent exited")
		}
		conn := g.DialPort(t, names[0])
		if err := both(ctx, t, g, conn, AgentSocket(names[0]), 64<<10, 77); err != nil {
			t.Fatalf("first agent after the second one gave up: %v", err)
		}
	})

	t.Run("bind-vfio-unsupported", func(t *testing.T) {
		out, err := g.Run(ctx, AgentPath, "run", "--bind", "vfio", "--socket-dir", "/tmp/vfio-sockets")
		var ee *ExitError
		if !errors.As(err, &ee) || ee.Code != 3 {
			t.Fatalf("vserial-agent run --bind vfio: %v, want exit status 3 (not supported yet)\n%s", err, out)
		}
	})

	t.Run("sigterm", func(t *testing.T) {
		out, err := a.stop(ctx)
		if err != nil {
			t.Fatalf("vserial-agent after SIGTERM: %v, want exit 0\n%s", err, out)
		}
		left, _ := ls(ctx, g, AgentSocketDir)
		for _, name := range names {
			for _, s := range left {
				if s == name {
					t.Errorf("socket %s left behind", name)
				}
			}
		}
	})

	t.Run("function-given-back", func(t *testing.T) {
		// After a clean exit the function goes back to the driver it had
		// before the agent started: none (README: "gives the function back
		// to the driver it had").
		fn := findVirtioConsole(t, g)
		if drv, err := g.Run(ctx, "readlink", fn+"/driver"); err == nil {
			t.Errorf("after the agent exited %s is still bound to %s; it had no driver before the agent took it",
				fn, strings.TrimSpace(drv))
		}
	})

	t.Run("restart", func(t *testing.T) {
		// A new agent takes the device again and finds the same ports.
		p, err := StartAgent(ctx, g, "--log-level", "info")
		if err != nil {
			t.Fatal(err)
		}
		a.proc, a.stopd = p, false
		for _, name := range names {
			if err := g.WaitPath(ctx, AgentSocket(name), 60*time.Second); err != nil {
				t.Fatalf("restarted agent: %v", err)
			}
		}
		conn := g.DialPort(t, names[1])
		if err := both(ctx, t, g, conn, AgentSocket(names[1]), 1<<20, 88); err != nil {
			t.Fatalf("restarted agent: %v", err)
		}
		if out, err := a.stop(ctx); err != nil {
			t.Fatalf("restarted vserial-agent after SIGTERM: %v\n%s", err, out)
		}
	})
}

// TestAgentSinglePort runs vserial-agent on a device without MULTIPORT
// (max_ports=1): one console port 0, no control queues, published as
// vport0p0.
func TestAgentSinglePort(t *testing.T) {
	t.Parallel()
	const sockName = "vport0p0"
	a := bootAgent(t, Options{Ports: []Port{{Console: true}}, MaxPorts: 1}, sockName)
	g := a.g
	ctx, cancel := context.WithTimeout(t.Context(), 6*time.Minute)
	defer cancel()
	sock := AgentSocket(sockName)
	// A virtconsole drops guest output while no host program is connected
	// (and never throttles), so the host connects first and keeps reading.
	conn := g.DialPort(t, "port0")

	t.Run("one-port-listed", func(t *testing.T) {
		l, out, err := a.list(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("vserial-agent list --json:\n%s", out)
		if len(l.Agent.Ports) != 1 {
			t.Fatalf("list shows %d ports, want the single console port", len(l.Agent.Ports))
		}
		if p := l.Agent.Ports[0]; p.ID != 0 || p.Socket != sock || p.Name != "" {
			t.Errorf("port %+v, want id 0, no name, socket %s", p, sock)
		}
		got, _ := ls(ctx, g, AgentSocketDir)
		t.Logf("%s: %v", AgentSocketDir, got)
	})

	t.Run("data", func(t *testing.T) {
		for i, n := range []int64{1, 4<<10 + 1, 256 << 10} {
			if err := both(ctx, t, g, conn, sock, n, uint64(50+i)); err != nil {
				t.Fatal(err)
			}
		}
		tr, err := SendToGuest(ctx, g, conn, sock, 4<<20, 60)
		if err != nil {
			t.Fatalf("host→guest 4 MiB: %v", err)
		}
		t.Logf("host→guest 4 MiB byte-exact, %.1f MB/s", tr.MBps)
	})

	t.Run("sigterm", func(t *testing.T) {
		out, err := a.stop(ctx)
		if err != nil {
			t.Fatalf("vserial-agent after SIGTERM: %v, want exit 0\n%s", err, out)
		}
		if _, err := g.Run(ctx, "wait-gone", sock, "10"); err != nil {
			t.Error(err)
		}
	})
}

// lastLine is the last non-empty line of s.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
