package qemu

import (
	"context"
	"errors"
	"net"
	"strings"
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

	// The checks every binding passes (the VFIO guests run them too).
	conns := map[string]*net.UnixConn{}
	moved := behaviourChecks(t, a, names, conns)

	t.Run("list-json", func(t *testing.T) {
		l, out, err := a.list(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("vserial-agent list --json:\n%s", out)
		if len(l.Functions) != 1 || l.Functions[0].Device != "1043" {
			t.Fatalf("list functions = %+v, want one with device 1043", l.Functions)
		}
		// A plain guest has no IOMMU: --bind auto (the default) takes uio.
		if f := l.Functions[0]; f.Driver != "uio_pci_generic" || f.Bind != "uio" || f.BindReason != "no IOMMU group" {
			t.Errorf("list function %+v, want bound to uio_pci_generic and bind uio (no IOMMU group)", f)
		}
		for i, name := range names {
			p, ok := l.port(AgentSocket(name))
			if !ok || p.Name != name || p.ID != uint32(i+1) {
				t.Errorf("list port for %s: %+v (found %v)", name, p, ok)
				continue
			}
			// Exactly what behaviourChecks moved.
			w := moved[AgentSocket(name)]
			if int64(p.BytesIn) != w[0] || int64(p.BytesOut) != w[1] {
				t.Errorf("%s counters in=%d out=%d, want in=%d out=%d", name, p.BytesIn, p.BytesOut, w[0], w[1])
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
		if err := both(ctx, t, g, conns[names[0]], AgentSocket(names[0]), 64<<10, 77); err != nil {
			t.Fatalf("first agent after the second one gave up: %v", err)
		}
	})

	t.Run("sigterm", func(t *testing.T) {
		out, err := a.stop(ctx)
		if err != nil {
			t.Fatalf("vserial-agent after SIGTERM: %v, want exit 0\n%s", err, out)
		}
		if !strings.Contains(out, `msg="bind auto"`) || !strings.Contains(out, `bind=uio reason="no IOMMU group"`) {
			t.Errorf("the agent's log does not show --bind auto taking uio in a guest without an IOMMU:\n%s", out)
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
		// before the agent started: none (docs/operating.md: "gives the function back
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
		if err := both(ctx, t, g, conns[names[1]], AgentSocket(names[1]), 1<<20, 88); err != nil {
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
