package qemu

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vserial/vserial/agent"
)

// qgaInfo is guest-info's reply.
type qgaInfo struct {
	Version  string       `json:"version"`
	Commands []qgaCommand `json:"supported_commands"`
}

type qgaCommand struct {
	Name    string `json:"name"`
	Enabled bool   `json:"enabled"`
}

// TestQemuGuestAgent runs Debian's qemu-guest-agent, unmodified, behind
// vserial-agent: qemu-ga listens on a guest Unix socket
// (--method=unix-listen), vserial-agent dials it for the
// org.qemu.guest_agent.0 port (connect mode, from a config file), and the
// host speaks the guest agent protocol on the port's chardev, as libvirt
// would: sync, ping, info, a file written and read back through
// guest-file-*, and the same after qemu-ga restarts.
func TestQemuGuestAgent(t *testing.T) {
	t.Parallel()
	const (
		name     = "org.qemu.guest_agent.0"
		qgaSock  = "/tmp/qga.sock"
		confPath = "/etc/vserial-agent.conf"
	)
	conf := "# qemu-ga listens, vserial-agent dials it for the port\n" +
		"port " + name + " mode=connect target=" + qgaSock + "\n"
	// The agent starts first and redials until qemu-ga listens.
	a := bootAgentArgs(t, Options{
		QGA:   true,
		Ports: []Port{{Name: name}},
		Files: []File{{Dst: confPath, Data: []byte(conf)}},
	}, []string{"--config", confPath})
	g := a.g
	ctx, cancel := context.WithTimeout(t.Context(), 8*time.Minute)
	defer cancel()
	port, _ := g.Port(name)

	mark := g.QMP.Mark()
	qga, err := StartQGA(ctx, g, qgaSock, time.Minute)
	if err != nil {
		t.Fatalf("starting qemu-ga: %v", err)
	}
	t.Cleanup(func() { logIfFailed(t, "qemu-ga", qga) })
	// The port opens towards the host when the agent has dialed qemu-ga
	// (its redial wait is at most 5 s).
	if _, err := waitPortChange(ctx, g, mark, port.ID, true); err != nil {
		t.Fatalf("no VSERPORT_CHANGE open=true: vserial-agent did not dial qemu-ga: %v", err)
	}
	a.waitList(ctx, t, "the port dialed to qemu-ga", func(l agentList) bool {
		p, ok := l.byName(name)
		return ok && p.Mode == agent.ModeConnect && p.Target == qgaSock && p.ClientConnected && p.Socket == ""
	})

	c := NewQGAClient(g.DialPort(t, name))
	t.Cleanup(func() { c.Close() })
	// Ids a stale reply cannot have: new for every test run.
	id := time.Now().UnixNano() % 1e12

	t.Run("sync", func(t *testing.T) {
		got, err := c.SyncRetry(ctx, 5*time.Second, id)
		if err != nil {
			t.Fatalf("guest-sync-delimited: %v", err)
		}
		t.Logf("guest-sync-delimited answered id %d (%d unanswered attempts)", got, got-id)
		id = got + 1
		// In step now: a plain guest-sync is answered with nothing before it.
		n, err := c.Sync(ctx, id)
		if err != nil {
			t.Fatalf("guest-sync: %v", err)
		}
		if n != 0 {
			t.Errorf("guest-sync %d after a sync: %d replies discarded, want 0", id, n)
		}
		id++
	})

	t.Run("ping", func(t *testing.T) {
		var r map[string]any
		if err := c.Execute(ctx, "guest-ping", nil, &r); err != nil {
			t.Fatal(err)
		}
		if len(r) != 0 {
			t.Errorf("guest-ping returned %v, want {}", r)
		}
	})

	t.Run("info", func(t *testing.T) {
		var info qgaInfo
		if err := c.Execute(ctx, "guest-info", nil, &info); err != nil {
			t.Fatal(err)
		}
		t.Logf("guest-info: qemu-ga %s, %d commands", info.Version, len(info.Commands))
		if !strings.HasPrefix(info.Version, "7.2") {
			t.Errorf("guest-info version %q, want the 7.2 of Debian 12's qemu-guest-agent", info.Version)
		}
		enabled := map[string]bool{}
		for _, cmd := range info.Commands {
			enabled[cmd.Name] = cmd.Enabled
		}
		for _, want := range []string{
			"guest-sync", "guest-sync-delimited", "guest-ping", "guest-info",
			"guest-file-open", "guest-file-write", "guest-file-seek", "guest-file-read", "guest-file-close",
		} {
			if e, ok := enabled[want]; !ok || !e {
				t.Errorf("guest-info: %s listed=%v enabled=%v, want listed and enabled", want, ok, e)
			}
		}
	})

	t.Run("file-host-to-guest", func(t *testing.T) {
		// Every byte value, and the bytes that mean something to the
		// protocol (newline, the 0xFF sentinel, braces).
		data := make([]byte, 0, 3<<10)
		for len(data) < cap(data) {
			data = append(data, byte(len(data)*7), '\n', 0xFF, '{', 0)
		}
		const path = "/tmp/qga-from-host.bin"
		h := qgaOpen(ctx, t, c, path, "w+")
		var w struct {
			Count int  `json:"count"`
			EOF   bool `json:"eof"`
		}
		if err := c.Execute(ctx, "guest-file-write", map[string]any{"handle": h, "buf-b64": base64.StdEncoding.EncodeToString(data)}, &w); err != nil {
			t.Fatal(err)
		}
		if w.Count != len(data) {
			t.Fatalf("guest-file-write wrote %d bytes, want %d", w.Count, len(data))
		}
		qgaSeek(ctx, t, c, h, 0, 0)
		if got, eof := qgaRead(ctx, t, c, h, len(data)+100); !bytes.Equal(got, data) || !eof {
			t.Errorf("read back %d bytes (eof %v), want the %d written and eof", len(got), eof, len(data))
		}
		qgaSeek(ctx, t, c, h, 1000, 1000)
		if got, _ := qgaRead(ctx, t, c, h, 17); !bytes.Equal(got, data[1000:1017]) {
			t.Errorf("read at 1000: %q, want %q", got, data[1000:1017])
		}
		qgaClose(ctx, t, c, h)
		// The file exists in the guest with exactly those bytes.
		if got := g.MustRun(t, "cat", path); got != string(data) {
			t.Errorf("the guest's %s holds %d bytes that differ from the %d written through qemu-ga", path, len(got), len(data))
		}
	})

	t.Run("file-guest-to-host", func(t *testing.T) {
		const path = "/tmp/qga-from-guest.txt"
		want := fmt.Sprintf("written in the guest at %d\n", id)
		g.MustRun(t, "touch", path)
		g.MustRun(t, "write", path, want)
		h := qgaOpen(ctx, t, c, path, "r")
		got, eof := qgaRead(ctx, t, c, h, 4096)
		qgaClose(ctx, t, c, h)
		if string(got) != want || !eof {
			t.Errorf("guest-file-read: %q (eof %v), want %q and eof", got, eof, want)
		}
	})

	t.Run("error-reply", func(t *testing.T) {
		var qe *QGAError
		err := c.Execute(ctx, "guest-file-open", map[string]any{"path": "/nonexistent/file", "mode": "r"}, nil)
		if !errors.As(err, &qe) {
			t.Fatalf("opening a missing file: %v, want an error reply", err)
		}
		t.Logf("error reply: %v", qe)
		// The stream stays in step after an error.
		if err := c.Execute(ctx, "guest-ping", nil, nil); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("qemu-ga-restart", func(t *testing.T) {
		mark := g.QMP.Mark()
		if err := qga.Signal(ctx, 15); err != nil {
			t.Fatal(err)
		}
		if out, err := qga.Wait(ctx); err != nil {
			t.Fatalf("qemu-ga after SIGTERM: %v\n%s", err, out)
		}
		// Its connection ended: the agent closes the port towards the host.
		next, err := waitPortChange(ctx, g, mark, port.ID, false)
		if err != nil {
			t.Fatalf("no VSERPORT_CHANGE open=false after qemu-ga exited: %v", err)
		}
		if qga, err = StartQGA(ctx, g, qgaSock, time.Minute); err != nil {
			t.Fatalf("restarting qemu-ga: %v", err)
		}
		t0 := time.Now()
		if _, err := waitPortChange(ctx, g, next, port.ID, true); err != nil {
			t.Fatalf("no VSERPORT_CHANGE open=true: vserial-agent did not redial qemu-ga: %v", err)
		}
		t.Logf("vserial-agent redialed qemu-ga %v after it restarted", time.Since(t0).Round(time.Millisecond))
		got, err := c.SyncRetry(ctx, 5*time.Second, id)
		if err != nil {
			t.Fatalf("guest-sync-delimited after the restart: %v", err)
		}
		id = got + 1
		if err := c.Execute(ctx, "guest-ping", nil, nil); err != nil {
			t.Fatalf("guest-ping after the restart: %v", err)
		}
		var info qgaInfo
		if err := c.Execute(ctx, "guest-info", nil, &info); err != nil || !slices.Contains(info.Commands, qgaCommand{"guest-ping", true}) {
			t.Fatalf("guest-info after the restart: %v, %+v", err, info)
		}
	})
}

// waitPortChange waits at most a minute for VSERPORT_CHANGE of port id
// after mark: a port that does not follow the dialed connection fails the
// test in that time instead of at the test's deadline.
func waitPortChange(ctx context.Context, g *Guest, mark int, id string, open bool) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	return g.QMP.WaitPortChange(ctx, mark, id, open)
}

// logIfFailed stops a guest process that still runs when the test failed
// (SIGTERM) and logs its output; when the test passed the guest is killed
// anyway.
func logIfFailed(t *testing.T, what string, p *Proc) {
	if !t.Failed() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if !p.Exited() {
		_ = p.Signal(ctx, 15)
	}
	out, err := p.Wait(ctx)
	t.Logf("%s (pid %d) stopped after the failure (%v); its output:\n%s", what, p.Pid, err, out)
}

func qgaOpen(ctx context.Context, t *testing.T, c *QGAClient, path, mode string) int64 {
	t.Helper()
	var h int64
	if err := c.Execute(ctx, "guest-file-open", map[string]any{"path": path, "mode": mode}, &h); err != nil {
		t.Fatal(err)
	}
	return h
}

func qgaSeek(ctx context.Context, t *testing.T, c *QGAClient, h, offset, want int64) {
	t.Helper()
	var r struct {
		Position int64 `json:"position"`
	}
	if err := c.Execute(ctx, "guest-file-seek", map[string]any{"handle": h, "offset": offset, "whence": "set"}, &r); err != nil {
		t.Fatal(err)
	}
	if r.Position != want {
		t.Fatalf("guest-file-seek to %d: position %d", offset, r.Position)
	}
}

func qgaRead(ctx context.Context, t *testing.T, c *QGAClient, h int64, count int) ([]byte, bool) {
	t.Helper()
	var r struct {
		Count int    `json:"count"`
		Buf   string `json:"buf-b64"`
		EOF   bool   `json:"eof"`
	}
	if err := c.Execute(ctx, "guest-file-read", map[string]any{"handle": h, "count": count}, &r); err != nil {
		t.Fatal(err)
	}
	b, err := base64.StdEncoding.DecodeString(r.Buf)
	if err != nil {
		t.Fatalf("guest-file-read: buf-b64: %v", err)
	}
	if len(b) != r.Count {
		t.Fatalf("guest-file-read: count %d, but buf-b64 holds %d bytes", r.Count, len(b))
	}
	return b, r.EOF
}

func qgaClose(ctx context.Context, t *testing.T, c *QGAClient, h int64) {
	t.Helper()
	if err := c.Execute(ctx, "guest-file-close", map[string]any{"handle": h}, nil); err != nil {
		t.Fatal(err)
	}
}
