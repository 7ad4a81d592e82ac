package qemu

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestAgentNodes runs vserial-agent run --nodes: every port is also a
// character device served through CUSE, /dev/vport<D>p<ID> with the
// /dev/virtio-ports/NAME symlink, with Linux's semantics
// (docs/nodes.md): data both ways byte-exact, one holder between the node
// and the socket, EAGAIN, end of file without the host, fsync and ioctl
// refused, a console port refused (ENXIO), PORT_OPEN seen by the host, and
// node and symlink gone with a hot-unplugged port.
func TestAgentNodes(t *testing.T) {
	t.Parallel()
	names := []string{"org.vserial.node.0", "org.vserial.node.1"}
	opts := Options{
		Ports:    []Port{{Console: true, ID: "con0"}, {Name: names[0], Nr: 1}, {Name: names[1], Nr: 2}},
		MaxPorts: 4,
		Modules:  []string{"cuse"},
	}
	a := bootAgentArgs(t, opts, []string{"--nodes"}, names...)
	g := a.g
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	link := func(name string) string { return "/dev/virtio-ports/" + name }
	// One device: its nodes take index 100 (portnode.NodeBase).
	nodes := []string{"/dev/vport100p1", "/dev/vport100p2"}
	const console = "/dev/vport100p0"
	check := func(t *testing.T, want string, argv ...string) {
		t.Helper()
		out, err := g.Run(ctx, append([]string{"nodecheck"}, argv...)...)
		if err != nil {
			t.Fatalf("nodecheck %v: %v", argv, err)
		}
		if !strings.Contains(out, want) {
			t.Fatalf("nodecheck %v: %q, want %q", argv, strings.TrimSpace(out), want)
		}
		t.Logf("nodecheck %v: %s", argv, strings.TrimSpace(out))
	}

	t.Run("nodes-and-symlinks", func(t *testing.T) {
		for i, name := range names {
			if err := g.WaitPath(ctx, link(name), 30*time.Second); err != nil {
				t.Fatal(err)
			}
			target := strings.TrimSpace(g.MustRun(t, "readlink", link(name)))
			if target != "../"+strings.TrimPrefix(nodes[i], "/dev/") {
				t.Errorf("%s → %s, want ../%s", link(name), target, strings.TrimPrefix(nodes[i], "/dev/"))
			}
			st := g.MustRun(t, "stat", nodes[i])
			if !strings.Contains(st, "type=char") {
				t.Errorf("%s is not a character device: %s", nodes[i], st)
			}
		}
	})

	conn := g.DialPort(t, names[0])
	node := link(names[0])
	t.Run("data-both-ways", func(t *testing.T) {
		if err := both(ctx, t, g, conn, node, 4<<20, 41); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("port-open-events", func(t *testing.T) {
		checkPortChangeEvents(ctx, t, g, conn, names[0], node)
	})
	t.Run("second-open-ebusy", func(t *testing.T) {
		check(t, "second-open=EBUSY", node, "busy")
	})
	t.Run("socket-refused-while-node-held", func(t *testing.T) {
		p, err := g.Start(ctx, "nodecheck", node, "hold", "4")
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		out, err := g.Run(ctx, "rejected", AgentSocket(names[0]), "3")
		if err != nil {
			t.Fatalf("socket client while the node is held: %v", err)
		}
		t.Logf("socket client: %s", strings.TrimSpace(out))
		if _, err := p.Wait(ctx); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("node-busy-while-socket-held", func(t *testing.T) {
		p, err := g.Start(ctx, "sink", AgentSocket(names[0]), "1")
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		check(t, "open=EBUSY", node, "open")
		if err := writePattern(ctx, conn, 1, 5); err != nil {
			t.Fatal(err)
		}
		if _, err := p.Wait(ctx); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("linux-errnos", func(t *testing.T) {
		time.Sleep(500 * time.Millisecond) // the socket client's close
		check(t, "read=EAGAIN", node, "eagain")
		// A signal during a waiting read: EINTR (SA_RESTART cannot be
		// honoured through CUSE; docs/nodes.md), and the node works on.
		check(t, "read=EINTR", node, "eintr")
		check(t, "revents=OUT", node, "poll")
		check(t, "fsync=EINVAL", node, "fsync")
		check(t, "ioctl=ENOTTY", node, "ioctl")
		check(t, "open=ENXIO", console, "open")
	})
	t.Run("eof-without-host", func(t *testing.T) {
		conn.Close()
		a.waitList(ctx, t, "host disconnected", func(l agentList) bool {
			p, ok := l.port(AgentSocket(names[0]))
			return ok && !p.HostConnected
		})
		check(t, "read=0", node, "eof")
		check(t, "revents=IN|HUP", node, "poll")
	})
	t.Run("unplug", func(t *testing.T) {
		// A program holds the node while its port is unplugged: the node
		// and its symlink go at once, and the open descriptor reads and
		// writes ENODEV and polls HUP, as Linux's does.
		p, err := g.Start(ctx, "nodecheck", nodes[1], "unplugged")
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		if err := g.UnplugPort(ctx, names[1]); err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{link(names[1]), nodes[1]} {
			if _, err := g.Run(ctx, "wait-gone", p, "20"); err != nil {
				t.Errorf("%s after the port was unplugged: %v", p, err)
			}
		}
		out, err := p.Wait(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("open descriptor after the unplug: %s", strings.Join(strings.Fields(out), " "))
		for _, want := range []string{"read=ENODEV", "write=ENODEV", "read-nonblock=ENODEV", "write-nonblock=ENODEV", "revents=HUP"} {
			if !strings.Contains(out, want) {
				t.Errorf("open descriptor after the unplug: %q, want %s", out, want)
			}
		}
	})
	t.Run("hotplug", func(t *testing.T) {
		// The same port plugged again gets its node and link back.
		if _, err := g.HotplugPort(ctx, Port{Name: names[1], Nr: 2}); err != nil {
			t.Fatal(err)
		}
		if err := g.WaitPath(ctx, link(names[1]), 20*time.Second); err != nil {
			t.Fatal(err)
		}
		check(t, "revents=IN|HUP", link(names[1]), "poll")
	})
	t.Run("sigterm-with-node-open", func(t *testing.T) {
		// The agent stops while a program holds a node: it exits 0, and
		// the nodes and links go.
		p, err := g.Start(ctx, "nodecheck", node, "hold", "30")
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		if out, err := a.stop(ctx); err != nil {
			t.Fatalf("vserial-agent after SIGTERM with a node open: %v\n%s", err, out)
		}
		for _, p := range []string{link(names[0]), link(names[1]), nodes[0], nodes[1], console} {
			if _, err := g.Run(ctx, "wait-gone", p, "10"); err != nil {
				t.Errorf("%s after the agent stopped: %v", p, err)
			}
		}
		_ = p.Signal(ctx, 9)
	})
}
