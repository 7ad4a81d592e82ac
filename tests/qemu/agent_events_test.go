package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/vserial/vserial/agent"
)

// TestAgentEvents follows `vserial-agent events --json` in a guest while the
// host side connects and disconnects a chardev, a guest client connects, is
// doubled and leaves, and a port is hot-plugged and unplugged over QMP; and
// checks that `events --wait` returns when the host connects. The stream is
// read when the agent stops (the guest helper returns a program's output
// when it exits): every event, in order, with its fields.
func TestAgentEvents(t *testing.T) {
	t.Parallel()
	const name, hot = "org.vserial.ev.0", "org.vserial.ev.hot"
	a := bootAgent(t, Options{Ports: []Port{{Name: name}}, MaxPorts: 8}, name)
	g := a.g
	ctx, cancel := context.WithTimeout(t.Context(), 8*time.Minute)
	defer cancel()
	sock := AgentSocket(name)

	// waitFor runs `events --wait COND --port PORT` in the guest and fails
	// the test unless it exits 0 (the condition held).
	waitFor := func(t *testing.T, cond, port string) string {
		t.Helper()
		out, err := g.Run(ctx, AgentPath, "events", "--socket-dir", AgentSocketDir, "--wait", cond, "--port", port, "--timeout", "90s")
		if err != nil {
			t.Fatalf("events --wait %s --port %s: %v", cond, port, err)
		}
		return out
	}
	// subscribed waits until n event streams are open on the agent.
	subscribed := func(t *testing.T, n int) {
		t.Helper()
		a.waitList(ctx, t, fmt.Sprintf("%d event subscribers", n), func(l agentList) bool { return l.Agent.Subscribers >= n })
	}

	stream, err := g.Start(ctx, AgentPath, "events", "--json", "--socket-dir", AgentSocketDir)
	if err != nil {
		t.Fatal(err)
	}
	subscribed(t, 1)

	t.Run("no-agent", func(t *testing.T) {
		out, err := g.Run(ctx, AgentPath, "events", "--socket-dir", "/tmp/no-agent-here")
		var ee *ExitError
		if !errors.As(err, &ee) || ee.Code != 1 || !strings.Contains(out, "no agent running") {
			t.Errorf("events with no agent: %v, want exit 1 saying no agent running\n%s", err, out)
		}
	})

	top := t
	var hostConn *net.UnixConn // the host side, connected from wait-host-connected on
	t.Run("host-connect-disconnect", func(t *testing.T) {
		conn := g.DialPort(t, name)
		waitFor(t, "host-connected", name)
		conn.Close()
		waitFor(t, "host-disconnected", name)
	})

	t.Run("wait-host-connected", func(t *testing.T) {
		// Started while the host is away: it must wait, then return
		// when the host connects, printing the event.
		w, err := g.Start(ctx, AgentPath, "events", "--socket-dir", AgentSocketDir, "--wait", "host-connected", "--port", name, "--timeout", "120s")
		if err != nil {
			t.Fatal(err)
		}
		subscribed(t, 2)
		time.Sleep(500 * time.Millisecond)
		if w.Exited() {
			out, err := w.Wait(ctx)
			t.Fatalf("events --wait host-connected returned while the host was away: %v\n%s", err, out)
		}
		t0 := time.Now()
		hostConn = g.DialPort(top, name) // stays connected after this case
		out, err := w.Wait(ctx)
		if err != nil {
			t.Fatalf("events --wait host-connected: %v\n%s", err, out)
		}
		t.Logf("events --wait host-connected returned %v after the host connected: %s", time.Since(t0).Round(time.Millisecond), strings.TrimSpace(out))
		if !strings.Contains(out, " host_connected ") || !strings.Contains(out, "name="+name) {
			t.Errorf("events --wait printed %q, want the host_connected line of %s", out, name)
		}
		// Already true: at once, from the snapshot.
		if out := waitFor(t, "host-connected", name); !strings.Contains(out, " snapshot ") {
			t.Errorf("events --wait on a condition that holds printed %q, want the snapshot", out)
		}
	})

	var sinkPID int
	t.Run("client-connect-reject-leave", func(t *testing.T) {
		if hostConn == nil {
			t.Fatal("the host is not connected: wait-host-connected failed")
		}
		sink, err := g.Start(ctx, "sink", sock, "1")
		if err != nil {
			t.Fatal(err)
		}
		sinkPID = sink.Pid
		waitFor(t, "client-connected", name)
		if out, err := g.Run(ctx, "rejected", sock, "10"); err != nil {
			t.Fatalf("second client: %v\n%s", err, out)
		}
		if err := writePattern(ctx, hostConn, 1, 7); err != nil {
			t.Fatal(err)
		}
		if _, err := sink.Wait(ctx); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "client-disconnected", name)
	})

	t.Run("hotplug-unplug", func(t *testing.T) {
		if _, err := g.HotplugPort(ctx, Port{Name: hot, Nr: 5}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "port-added", hot)
		if err := g.UnplugPort(ctx, hot); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "port-removed", hot)
	})

	t.Run("stream-in-order", func(t *testing.T) {
		// The agent stopping ends the stream: events exits 0.
		if out, err := a.stop(ctx); err != nil {
			t.Fatalf("agent SIGTERM: %v\n%s", err, out)
		}
		out, err := stream.Wait(ctx)
		if err != nil {
			t.Fatalf("events --json after the agent stopped: %v, want exit 0\n%s", err, out)
		}
		t.Logf("events --json:\n%s", out)
		var evs []agent.Event
		for line := range strings.Lines(out) {
			var ev agent.Event
			if err := json.Unmarshal([]byte(line), &ev); err != nil {
				t.Fatalf("not a JSON event line: %q: %v", line, err)
			}
			evs = append(evs, ev)
		}
		checkEventStream(t, evs, name, hot, sinkPID)
	})
}

// checkEventStream checks the events TestAgentEvents caused, in order.
func checkEventStream(t *testing.T, evs []agent.Event, name, hot string, sinkPID int) {
	t.Helper()
	sock, hotSock := AgentSocket(name), AgentSocket(hot)
	type want struct {
		kind   agent.EventKind
		port   uint32
		check  func(agent.Event) string // "" when fine
		repeat bool                     // may come more than once (a name arriving late)
	}
	isPort := func(n, s string) func(agent.Event) string {
		return func(ev agent.Event) string {
			if ev.Name != n || ev.Socket != s {
				return fmt.Sprintf("name %q socket %q, want %q %q", ev.Name, ev.Socket, n, s)
			}
			return ""
		}
	}
	var ws []want
	add := func(kind agent.EventKind, port uint32, check func(agent.Event) string) {
		ws = append(ws, want{kind: kind, port: port, check: check})
	}
	add(agent.EventHostConnected, 1, isPort(name, sock))
	add(agent.EventHostDisconnected, 1, isPort(name, sock))
	add(agent.EventHostConnected, 1, isPort(name, sock))
	add(agent.EventClientConnected, 1, func(ev agent.Event) string {
		if s := isPort(name, sock)(ev); s != "" {
			return s
		}
		if ev.PeerPID == nil || int(*ev.PeerPID) != sinkPID {
			return fmt.Sprintf("peer_pid %v, want the client's pid %d", deref(ev.PeerPID), sinkPID)
		}
		return ""
	})
	add(agent.EventClientRejected, 1, func(ev agent.Event) string {
		if ev.Rejected != 1 {
			return fmt.Sprintf("rejected_total %d, want 1", ev.Rejected)
		}
		return isPort(name, sock)(ev)
	})
	add(agent.EventClientDisconnected, 1, func(ev agent.Event) string {
		if ev.Reason != "client closed" {
			return fmt.Sprintf("reason %q, want client closed", ev.Reason)
		}
		return isPort(name, sock)(ev)
	})
	// The hot-plugged port: PORT_ADD comes before PORT_NAME, so it is
	// added under its name or its fallback and then renamed.
	add(agent.EventPortAdded, 5, func(ev agent.Event) string {
		if ev.HostConnected == nil || *ev.HostConnected {
			return "host_connected missing or true"
		}
		if ev.Name == hot && ev.Socket == hotSock || ev.Name == "" && ev.Socket == AgentSocket("vport0p5") {
			return ""
		}
		return fmt.Sprintf("name %q socket %q", ev.Name, ev.Socket)
	})
	ws = append(ws, want{kind: agent.EventPortRenamed, port: 5, repeat: true, check: isPort(hot, hotSock)})
	add(agent.EventPortRemoved, 5, func(ev agent.Event) string {
		if ev.Reason != "removed by the device" {
			return fmt.Sprintf("reason %q", ev.Reason)
		}
		return isPort(hot, hotSock)(ev)
	})
	add(agent.EventPortRemoved, 1, func(ev agent.Event) string {
		if ev.Reason != "agent closing" {
			return fmt.Sprintf("reason %q", ev.Reason)
		}
		return isPort(name, sock)(ev)
	})

	if len(evs) == 0 || evs[0].Event != agent.EventSnapshot || evs[0].Status == nil {
		t.Fatalf("the stream does not start with a snapshot")
	}
	snap := evs[0].Status
	if len(snap.Ports) != 1 || snap.Ports[0].Name != name || snap.Ports[0].Socket != sock || snap.Ports[0].HostConnected || snap.SocketDir != AgentSocketDir {
		t.Errorf("snapshot %+v, want %s alone, host away", snap, name)
	}
	if last := evs[len(evs)-1]; last.Event != agent.EventAgentStopping {
		t.Errorf("last line %s, want agent_stopping", last.Event)
	}
	body := evs[1 : len(evs)-1]
	i := 0
	for _, ev := range body {
		for i < len(ws) && ws[i].repeat && !(ev.Event == ws[i].kind && deref(ev.Port) == ws[i].port) {
			i++ // an optional step that did not happen (the name came with PORT_ADD)
		}
		if i >= len(ws) {
			t.Errorf("unexpected event after the expected ones: %+v", ev)
			continue
		}
		w := ws[i]
		if ev.Event != w.kind || ev.Port == nil || *ev.Port != w.port || ev.Device == nil || *ev.Device != 0 {
			t.Errorf("event %d: %s dev %v port %v, want %s dev 0 port %d", i, ev.Event, deref(ev.Device), deref(ev.Port), w.kind, w.port)
			i++
			continue
		}
		if msg := w.check(ev); msg != "" {
			t.Errorf("%s of port %d: %s", ev.Event, w.port, msg)
		}
		if !w.repeat {
			i++
		}
	}
	for ; i < len(ws); i++ {
		if !ws[i].repeat {
			t.Errorf("missing event: %s of port %d", ws[i].kind, ws[i].port)
		}
	}
	for j := 1; j < len(evs); j++ {
		if evs[j].Time.Before(evs[j-1].Time) {
			t.Errorf("line %d at %v is older than the line before (%v)", j, evs[j].Time, evs[j-1].Time)
		}
	}
}

func deref[T any](p *T) any {
	if p == nil {
		return nil
	}
	return *p
}
