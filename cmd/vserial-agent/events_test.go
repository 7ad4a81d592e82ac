package main

import (
	"bytes"
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vserial/vserial/agent"
	"github.com/vserial/vserial/agent/agenttest"
)

// servedAgent starts an agent with its control socket in a fresh directory.
func servedAgent(t *testing.T) *agent.Agent {
	t.Helper()
	a, err := agent.New(agent.Config{SocketDir: filepath.Join(shortTempDir(t), "run")})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := a.ListenControl()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.ServeControl(ln) }()
	t.Cleanup(func() {
		a.Close()
		if err := <-done; err != nil {
			t.Errorf("ServeControl: %v", err)
		}
	})
	return a
}

// runEvents runs `vserial-agent events ARGS` in the background; the
// returned function waits for its exit code and output.
func runEvents(t *testing.T, ctx context.Context, args ...string) func() (int, string, string) {
	t.Helper()
	stdout, stderr := &syncBuffer{}, &syncBuffer{}
	code := make(chan int, 1)
	go func() { code <- realMain(ctx, append([]string{"events"}, args...), stdout, stderr, nil) }()
	return func() (int, string, string) {
		t.Helper()
		select {
		case c := <-code:
			return c, stdout.String(), stderr.String()
		case <-time.After(patience):
			t.Fatalf("events %v did not exit; stdout:\n%s\nstderr:\n%s", args, stdout.String(), stderr.String())
			return -1, "", ""
		}
	}
}

// waitSubscribed waits until n event streams are open on a (0: until every
// earlier one is gone).
func waitSubscribed(t *testing.T, a *agent.Agent, n int) {
	t.Helper()
	deadline := time.Now().Add(patience)
	for a.Subscribers() < n || (n == 0 && a.Subscribers() > 0) {
		if time.Now().After(deadline) {
			t.Fatalf("%d subscribers, waiting for %d", a.Subscribers(), n)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestEventsCommandStreamsUntilTheAgentStops(t *testing.T) {
	for _, asJSON := range []bool{false, true} {
		a := servedAgent(t)
		p := agenttest.NewPort(1, "org.example.one")
		if err := a.AddPort(0, p); err != nil {
			t.Fatal(err)
		}
		args := []string{"--socket-dir", a.Dir()}
		if asJSON {
			args = append(args, "--json")
		}
		wait := runEvents(t, context.Background(), args...)
		waitSubscribed(t, a, 1)
		observe(t, a, agent.EventHostConnected, 1, func() { p.SetHostConnected(true) })
		a.Close()
		code, out, errOut := wait()
		if code != exitOK {
			t.Fatalf("json=%v: exit %d, want 0 when the agent stops; stderr %s", asJSON, code, errOut)
		}
		lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
		if asJSON {
			var kinds []string
			for _, l := range lines {
				var ev agent.Event
				if err := json.Unmarshal([]byte(l), &ev); err != nil {
					t.Fatalf("--json line %q: %v", l, err)
				}
				kinds = append(kinds, string(ev.Event))
			}
			if got := strings.Join(kinds, " "); got != "snapshot host_connected port_removed agent_stopping" {
				t.Errorf("--json events %q\n%s", got, out)
			}
			continue
		}
		sock := filepath.Join(a.Dir(), "org.example.one")
		want := []string{
			" snapshot socket_dir=" + a.Dir() + " ports=1",
			"  dev=0 port=1 name=org.example.one socket=" + sock + " mode=listen host=no client=no",
			" host_connected dev=0 port=1 name=org.example.one socket=" + sock,
			" port_removed dev=0 port=1 name=org.example.one socket=" + sock + ` reason="agent closing"`,
			" agent_stopping",
		}
		if len(lines) != len(want) {
			t.Fatalf("text output:\n%s\nwant lines ending in:\n%s", out, strings.Join(want, "\n"))
		}
		for i, w := range want {
			if !strings.HasSuffix(lines[i], w) {
				t.Errorf("line %d %q, want it to end in %q", i, lines[i], w)
			}
			if i != 1 {
				if _, err := time.Parse("2006-01-02T15:04:05.000Z", strings.Fields(lines[i])[0]); err != nil {
					t.Errorf("line %d does not start with a timestamp: %q", i, lines[i])
				}
			}
		}
	}
}

func TestEventsCommandNoAgent(t *testing.T) {
	dir := shortTempDir(t)
	for _, args := range [][]string{{"--socket-dir", dir}, {"--socket-dir", dir, "--wait", "host-connected", "--port", "x"}} {
		code, _, errOut := runEvents(t, context.Background(), args...)()
		if code != exitFailure || !strings.Contains(errOut, "no agent running") {
			t.Errorf("%v: exit %d %q, want 1 and no agent running", args, code, errOut)
		}
	}
}

func TestEventsWait(t *testing.T) {
	a := servedAgent(t)
	p := agenttest.NewPort(3, "org.example.wait")
	if err := a.AddPort(1, p); err != nil {
		t.Fatal(err)
	}
	dir := a.Dir()

	// Already true in the snapshot: at once, by name and by socket.
	for _, port := range []string{"org.example.wait", filepath.Join(dir, "org.example.wait")} {
		code, out, errOut := runEvents(t, context.Background(), "--socket-dir", dir, "--wait", "host-disconnected", "--port", port)()
		if code != exitOK || !strings.Contains(out, " snapshot ") {
			t.Errorf("--port %s host-disconnected: exit %d, stdout %q stderr %q; want 0 from the snapshot", port, code, out, errOut)
		}
	}
	code, _, errOut := runEvents(t, context.Background(), "--socket-dir", dir, "--wait", "port-removed", "--port", "vport9p9")()
	if code != exitOK {
		t.Errorf("port-removed of an absent port: exit %d (%s), want 0", code, errOut)
	}

	// Becomes true later: returns on the event.
	waitSubscribed(t, a, 0)
	wait := runEvents(t, context.Background(), "--socket-dir", dir, "--wait", "host-connected", "--port", "org.example.wait", "--json")
	waitSubscribed(t, a, 1)
	time.Sleep(20 * time.Millisecond)
	p.SetHostConnected(true)
	code, out, errOut := wait()
	if code != exitOK {
		t.Fatalf("host-connected: exit %d (%s)", code, errOut)
	}
	var ev agent.Event
	if err := json.Unmarshal([]byte(out), &ev); err != nil || (ev.Event != agent.EventHostConnected && ev.Event != agent.EventSnapshot) {
		t.Errorf("host-connected printed %q (%v)", out, err)
	}

	// A port that only gets its name later is found under it.
	q := agenttest.NewPort(4, "")
	waitSubscribed(t, a, 0)
	wait = runEvents(t, context.Background(), "--socket-dir", dir, "--wait", "port-added", "--port", "late")
	waitSubscribed(t, a, 1)
	if err := a.AddPort(1, q); err != nil {
		t.Fatal(err)
	}
	q.SetName("late")
	if code, out, errOut := wait(); code != exitOK || !strings.Contains(out, "port_renamed") {
		t.Errorf("port-added late: exit %d stdout %q stderr %q, want 0 on port_renamed", code, out, errOut)
	}

	// Never true: the timeout, exit 4.
	t0 := time.Now()
	code, _, errOut = runEvents(t, context.Background(), "--socket-dir", dir, "--wait", "client-connected", "--port", "org.example.wait", "--timeout", "300ms")()
	if code != exitTimeout || !strings.Contains(errOut, "timed out after 300ms waiting for client-connected on port org.example.wait") {
		t.Errorf("timeout: exit %d %q, want 4", code, errOut)
	}
	if d := time.Since(t0); d < 300*time.Millisecond {
		t.Errorf("timed out after %v, before the 300ms", d)
	}

	// The agent stopping first: exit 1.
	waitSubscribed(t, a, 0)
	wait = runEvents(t, context.Background(), "--socket-dir", dir, "--wait", "client-connected", "--port", "org.example.wait")
	waitSubscribed(t, a, 1)
	a.Close()
	if code, _, errOut := wait(); code != exitFailure || !strings.Contains(errOut, "the agent stopped before client-connected") {
		t.Errorf("agent stopped: exit %d %q, want 1", code, errOut)
	}
}

func TestEventsUsage(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--wait", "host-connected"}, "needs --port"},
		{[]string{"--wait", "host-up", "--port", "x"}, `--wait "host-up": want one of port-added, port-removed, host-connected`},
		{[]string{"--timeout", "5s"}, "--timeout needs --wait"},
		{[]string{"--wait", "port-added", "--port", "x", "--timeout", "-1s"}, "must not be negative"},
		{[]string{"--port", " "}, "--port"},
		{[]string{"extra"}, "unexpected argument"},
		{[]string{"--timeout", "soon"}, "invalid argument"},
		{[]string{"--socket-dir", ""}, "empty path"},
	} {
		var stdout, stderr bytes.Buffer
		code := realMain(context.Background(), append([]string{"events"}, c.args...), &stdout, &stderr, nil)
		if code != exitUsage || !strings.Contains(stderr.String(), c.want) {
			t.Errorf("events %v: exit %d %q, want 2 and %q", c.args, code, stderr.String(), c.want)
		}
	}
}

func TestFormatEventQuotes(t *testing.T) {
	dev, id := 0, uint32(2)
	ev := agent.Event{Event: agent.EventProtocolViolation, Time: time.Date(2026, 1, 2, 3, 4, 5, 6e6, time.UTC), Device: &dev, Port: &id,
		Name: "a b", Reason: "bad\nname", Violations: 7}
	want := `2026-01-02T03:04:05.006Z protocol_violation dev=0 port=2 name="a b" violations=7 reason="bad\nname"` + "\n"
	if got := formatEvent(ev, ""); got != want {
		t.Errorf("formatEvent:\n%q\nwant\n%q", got, want)
	}
}

// observe subscribes to a, runs action, and returns once the agent has
// published an event of kind about port id: every stream open before has
// it queued then.
func observe(t *testing.T, a *agent.Agent, kind agent.EventKind, id uint32, action func()) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	s, err := agent.SubscribeEvents(ctx, a.Dir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, _, err := s.Next(); err != nil {
		t.Fatal(err)
	}
	action()
	for {
		ev, _, err := s.Next()
		if err != nil {
			t.Fatalf("waiting for %s of port %d: %v", kind, id, err)
		}
		if ev.Event == kind && ev.Port != nil && *ev.Port == id {
			return
		}
	}
}

// --port keeps the lines of one port (and the stream's own lines).
func TestEventsCommandPortFilter(t *testing.T) {
	a := servedAgent(t)
	p1, p2 := agenttest.NewPort(1, "org.example.a"), agenttest.NewPort(2, "")
	for _, p := range []*agenttest.Port{p1, p2} {
		if err := a.AddPort(0, p); err != nil {
			t.Fatal(err)
		}
	}
	wait := runEvents(t, context.Background(), "--socket-dir", a.Dir(), "--port", "org.example.a")
	waitSubscribed(t, a, 1)
	observe(t, a, agent.EventPortRenamed, 2, func() { p2.SetName("org.example.b") })
	observe(t, a, agent.EventHostConnected, 2, func() { p2.SetHostConnected(true) })
	observe(t, a, agent.EventHostConnected, 1, func() { p1.SetHostConnected(true) })
	a.Close()
	code, out, errOut := wait()
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var kinds []string
	for line := range strings.Lines(out) {
		if strings.HasPrefix(line, "  ") {
			if !strings.Contains(line, " port=1 ") {
				t.Errorf("snapshot line of another port: %q", line)
			}
			continue
		}
		f := strings.Fields(line)
		kinds = append(kinds, f[1])
		if f[1] != "snapshot" && f[1] != "agent_stopping" && !strings.Contains(line, " port=1 ") {
			t.Errorf("line of another port: %q", line)
		}
	}
	if got := strings.Join(kinds, " "); got != "snapshot host_connected port_removed agent_stopping" {
		t.Errorf("filtered lines %q\n%s", got, out)
	}
}

// The model --wait keeps: the snapshot, then the events applied.
func TestWaitModel(t *testing.T) {
	dev, id := 0, uint32(3)
	yes := true
	ev := func(kind agent.EventKind, name, sock string) agent.Event {
		return agent.Event{Event: kind, Device: &dev, Port: &id, Name: name, Socket: sock}
	}
	m := portModel{}
	m.apply(agent.Event{Event: agent.EventSnapshot, Status: &agent.StatusReport{Ports: []agent.PortStatus{}}})
	steps := []struct {
		ev   agent.Event
		cond waitCond
		port string
		want bool
	}{
		{agent.Event{Event: agent.EventSnapshot, Status: &agent.StatusReport{}}, "port-removed", "x", true},
		{ev(agent.EventPortAdded, "", "/run/vserial/vport0p3"), "port-added", "vport0p3", true},
		{ev(agent.EventProtocolViolation, "", "/run/vserial/vport0p3"), "host-disconnected", "vport0p3", true},
		{ev(agent.EventPortRenamed, "x", "/run/vserial/x"), "port-added", "vport0p3", false},
		{ev(agent.EventHostConnected, "x", "/run/vserial/x"), "host-connected", "x", true},
		{ev(agent.EventClientConnected, "x", "/run/vserial/x"), "client-connected", "/run/vserial/x", true},
		{ev(agent.EventClientDisconnected, "x", "/run/vserial/x"), "client-connected", "x", false},
		{ev(agent.EventHostDisconnected, "x", "/run/vserial/x"), "host-connected", "x", false},
		{ev(agent.EventPortRemoved, "x", "/run/vserial/x"), "port-removed", "x", true},
		// A device event about a port nobody announced creates nothing.
		{ev(agent.EventDeviceReset, "x", "/run/vserial/x"), "port-removed", "x", true},
		{agent.Event{Event: agent.EventPortAdded, Device: &dev, Port: &id, Name: "x", HostConnected: &yes}, "host-connected", "x", true},
	}
	for i, s := range steps {
		m.apply(s.ev)
		if got := m.holds(s.cond, s.port); got != s.want {
			t.Errorf("step %d (%s): %s on %s = %v, want %v", i, s.ev.Event, s.cond, s.port, got, s.want)
		}
	}
}
