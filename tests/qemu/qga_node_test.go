package qemu

import (
	"bytes"
	"context"
	"encoding/base64"
	"slices"
	"testing"
	"time"
)

// qgaNodeName is the port Debian's qemu-ga opens by default, through the
// link udev makes: /dev/virtio-ports/org.qemu.guest_agent.0.
const (
	qgaNodeName = "org.qemu.guest_agent.0"
	qgaNodeLink = "/dev/virtio-ports/" + qgaNodeName
)

// TestQGAThroughNode runs Debian's qemu-ga, unmodified and with its
// defaults (--method=virtio-serial on /dev/virtio-ports/org.qemu.guest_agent.0),
// first on the in-kernel driver's node (the link made by hand, as udev
// would: this validates the test) and then, in the same boot and on the
// same function, on vserial's node (vserial-agent run --nodes): the host
// gets guest-sync-delimited and guest-sync, guest-ping, guest-info and a
// file written and read back through guest-file-*, again after the host
// reconnects and again after qemu-ga restarts.
func TestQGAThroughNode(t *testing.T) {
	t.Parallel()
	g := Boot(t, Options{
		QGA:     true,
		Ports:   []Port{{Name: qgaNodeName}},
		Modules: []string{"cuse"},
		// qemu-ga's defaults keep its pid file and state in /var/run.
		Files: []File{BuildAgent(t), {Dst: "/var/run/.keep", Data: nil}},
	})
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	port, _ := g.Port(qgaNodeName)
	// Ids a stale reply cannot have: new for every test run.
	id := time.Now().UnixNano() % 1e12

	t.Run("kernel", func(t *testing.T) {
		dev := kernelPorts(t, g)[qgaNodeName]
		if dev == "" {
			t.Fatal("the kernel shows no port " + qgaNodeName)
		}
		g.MustRun(t, "symlink", "../"+dev[len("/dev/"):], qgaNodeLink)
		qgaNodeSession(ctx, t, g, port, &id)
		g.MustRun(t, "rm", qgaNodeLink)
	})
	if t.Failed() {
		return
	}

	t.Run("vserial", func(t *testing.T) {
		if _, err := ReleaseKernelDriver(ctx, g); err != nil {
			t.Fatal(err)
		}
		agent, err := StartAgent(ctx, g, "--nodes")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { logIfFailed(t, "vserial-agent", agent) })
		waitAgentPath(ctx, t, g, agent, qgaNodeLink)
		t.Logf("%s -> %s", qgaNodeLink, g.MustRun(t, "readlink", qgaNodeLink))
		qgaNodeSession(ctx, t, g, port, &id)
	})
}

// qgaNodeSession starts qemu-ga with its defaults and talks to it from the
// host: commands, a host reconnect, a qemu-ga restart. qemu-ga is stopped
// at the end; *id is the next sync id.
func qgaNodeSession(ctx context.Context, t *testing.T, g *Guest, port Port, id *int64) {
	t.Helper()
	start := func() *Proc {
		t.Helper()
		mark := g.QMP.Mark()
		qga, err := g.Start(ctx, QGAPath) // no arguments: its defaults
		if err != nil {
			t.Fatalf("starting qemu-ga: %v", err)
		}
		t.Cleanup(func() { logIfFailed(t, "qemu-ga", qga) })
		if _, err := waitPortChange(ctx, g, mark, port.ID, true); err != nil {
			t.Fatalf("qemu-ga did not open its port (no VSERPORT_CHANGE open=true): %v", err)
		}
		return qga
	}
	stop := func(qga *Proc) {
		t.Helper()
		mark := g.QMP.Mark()
		if err := qga.Signal(ctx, 15); err != nil {
			t.Fatal(err)
		}
		if out, err := qga.Wait(ctx); err != nil {
			t.Fatalf("qemu-ga after SIGTERM: %v\n%s", err, out)
		}
		if _, err := waitPortChange(ctx, g, mark, port.ID, false); err != nil {
			t.Fatalf("qemu-ga's exit did not close the port (no VSERPORT_CHANGE open=false): %v", err)
		}
	}
	client := func() *QGAClient {
		t.Helper()
		c := NewQGAClient(g.DialPort(t, port.Name))
		got, err := c.SyncRetry(ctx, 5*time.Second, *id)
		if err != nil {
			t.Fatalf("guest-sync-delimited: %v", err)
		}
		*id = got + 1
		if n, err := c.Sync(ctx, *id); err != nil || n != 0 {
			t.Fatalf("guest-sync %d: %v (%d replies discarded, want 0)", *id, err, n)
		}
		*id++
		return c
	}

	qga := start()
	c := client()
	qgaNodeCommands(ctx, t, g, c)

	// The host goes away and comes back: qemu-ga keeps its port open.
	c.Close()
	time.Sleep(500 * time.Millisecond)
	c = client()
	if err := c.Execute(ctx, "guest-ping", nil, nil); err != nil {
		t.Fatalf("guest-ping after the host reconnected: %v", err)
	}

	// qemu-ga restarts: it closes and opens the port again.
	stop(qga)
	time.Sleep(time.Second) // QEMU reports one VSERPORT_CHANGE a second per port
	qga = start()
	got, err := c.SyncRetry(ctx, 5*time.Second, *id)
	if err != nil {
		t.Fatalf("guest-sync-delimited after qemu-ga restarted: %v", err)
	}
	*id = got + 1
	qgaNodeCommands(ctx, t, g, c)
	c.Close()
	stop(qga)
}

// qgaNodeCommands runs guest-ping, guest-info and a file round trip.
func qgaNodeCommands(ctx context.Context, t *testing.T, g *Guest, c *QGAClient) {
	t.Helper()
	var r map[string]any
	if err := c.Execute(ctx, "guest-ping", nil, &r); err != nil || len(r) != 0 {
		t.Fatalf("guest-ping: %v %v, want {}", err, r)
	}
	var info qgaInfo
	if err := c.Execute(ctx, "guest-info", nil, &info); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(info.Commands, qgaCommand{"guest-file-open", true}) {
		t.Fatalf("guest-info: qemu-ga %s does not offer guest-file-open: %+v", info.Version, info.Commands)
	}
	data := make([]byte, 0, 2<<10)
	for len(data) < cap(data) {
		data = append(data, byte(len(data)*5), '\n', 0xFF, '}')
	}
	const path = "/tmp/qga-node.bin"
	h := qgaOpen(ctx, t, c, path, "w+")
	var w struct {
		Count int `json:"count"`
	}
	if err := c.Execute(ctx, "guest-file-write", map[string]any{"handle": h, "buf-b64": base64.StdEncoding.EncodeToString(data)}, &w); err != nil || w.Count != len(data) {
		t.Fatalf("guest-file-write: %v, %d of %d bytes", err, w.Count, len(data))
	}
	qgaSeek(ctx, t, c, h, 0, 0)
	if got, eof := qgaRead(ctx, t, c, h, len(data)+10); !bytes.Equal(got, data) || !eof {
		t.Errorf("guest-file-read: %d bytes (eof %v), want the %d written and eof", len(got), eof, len(data))
	}
	qgaClose(ctx, t, c, h)
	if got := g.MustRun(t, "cat", path); got != string(data) {
		t.Errorf("the guest's %s differs from what was written through qemu-ga", path)
	}
}
