package qemu

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vserial/vserial/agent"
)

// Guest tests of the agent's local placement and control socket under
// abuse by local users (issue 10, items 6 and 7).

// TestAgentSecondRunTouchesNothing starts a second `vserial-agent run
// --console-pty` on the socket directory of a running one (as a second
// unit or a mistaken start would): it must exit 1 saying the directory is
// busy and touch nothing; the first agent's console link and sockets stay,
// and it keeps serving.
func TestAgentSecondRunTouchesNothing(t *testing.T) {
	t.Parallel()
	const con, plain = "org.vserial.console", "org.vserial.plain"
	opts := Options{Ports: []Port{{Console: true, Name: con}, {Name: plain, Nr: 1}}, MaxPorts: 4}
	a := bootAgentArgs(t, opts, []string{"--console-pty"}, con, con+".pty", plain)
	g := a.g
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	link := AgentSocket(con + ".pty")
	tty := strings.TrimSpace(g.MustRun(t, "readlink", link))

	out, err := g.Run(ctx, AgentPath, "run", "--socket-dir", AgentSocketDir, "--console-pty", "--log-level", "info")
	var ee *ExitError
	if !errors.As(err, &ee) || ee.Code != 1 || !strings.Contains(out, "another agent") {
		t.Fatalf("second run on a busy socket dir: %v, want exit 1 saying another agent holds it\n%s", err, out)
	}
	t.Logf("second run: %s", lastLine(out))
	if got, err := g.Run(ctx, "readlink", link); err != nil || strings.TrimSpace(got) != tty {
		t.Fatalf("after the second run %s points at %q (%v), want %s as before", link, strings.TrimSpace(got), err, tty)
	}
	for _, s := range []string{con, plain, agent.ControlName} {
		if _, err := g.Run(ctx, "stat", AgentSocket(s)); err != nil {
			t.Errorf("after the second run %s is gone: %v", AgentSocket(s), err)
		}
	}
	if a.proc.Exited() {
		t.Fatal("the first agent exited")
	}

	// The first agent still serves: a byte from the host reaches a guest
	// client of the plain port.
	host := g.DialPort(t, plain)
	sink, err := g.Start(ctx, "sink", AgentSocket(plain), "1")
	if err != nil {
		t.Fatal(err)
	}
	a.waitList(ctx, t, "the guest client on "+plain, func(l agentList) bool {
		p, ok := l.byName(plain)
		return ok && p.ClientConnected && p.HostConnected
	})
	if err := writePattern(ctx, host, 1, 7); err != nil {
		t.Fatal(err)
	}
	if out, err := sink.Wait(ctx); err != nil {
		t.Fatalf("guest client of the first agent after the second run: %v\n%s", err, out)
	}
	if out, err := a.stop(ctx); err != nil {
		t.Fatalf("first agent after SIGTERM: %v\n%s", err, out)
	}
	if _, err := g.Run(ctx, "wait-gone", link, "10"); err != nil {
		t.Errorf("console link after the first agent stopped: %v", err)
	}
}

// floodIdle is how many idle connections TestAgentControlFlood opens on
// .control (the figure).
const floodIdle = 10000

// TestAgentControlFlood has one user (uid 1000) hold every event stream a
// user may hold, with subscribers that never read after their snapshot,
// and then open floodIdle idle connections to .control and keep them. The
// agent must keep answering: root's `list`, and `events --wait` from
// another user (uid 2000), which gets its snapshot at once.
func TestAgentControlFlood(t *testing.T) {
	t.Parallel()
	const name = "org.vserial.flood"
	// Other users must be able to connect to .control at all.
	a := bootAgentArgs(t, Options{Ports: []Port{{Name: name}}, MaxPorts: 4}, []string{"--control-mode", "0666"}, name)
	g := a.g
	ctx, cancel := context.WithTimeout(t.Context(), 6*time.Minute)
	defer cancel()
	host := g.DialPort(t, name)
	defer host.Close()
	a.waitList(ctx, t, "the host connected", func(l agentList) bool {
		p, ok := l.byName(name)
		return ok && p.HostConnected
	})

	const ready, hold = "/run/flood/ready", 60
	t0 := time.Now()
	flood, err := g.Start(ctx, "ctlflood", "1000", AgentSocketDir, strconv.Itoa(floodIdle), strconv.Itoa(agent.MaxSubscribersPerUID), ready, strconv.Itoa(hold))
	if err != nil {
		t.Fatal(err)
	}
	if err := g.WaitPath(ctx, ready, 3*time.Minute); err != nil {
		out, werr := flood.Wait(ctx)
		t.Fatalf("ctlflood never got ready: %v (%v)\n%s", err, werr, out)
	}
	t.Logf("uid 1000 holds %d subscribers and opened %d idle connections in %v", agent.MaxSubscribersPerUID, floodIdle, time.Since(t0).Round(time.Millisecond))

	// Root is another user: list answers.
	l := a.waitList(ctx, t, "the flood's subscribers", func(l agentList) bool { return l.Agent.Subscribers == agent.MaxSubscribersPerUID })
	if l.Agent.ControlRefused == 0 {
		t.Errorf("list says no control connection was refused during the flood")
	}
	// And so is uid 2000: its events --wait gets the snapshot, where the
	// condition already holds.
	t1 := time.Now()
	out, err := g.Run(ctx, "as-uid", "2000", AgentPath, "events", "--socket-dir", AgentSocketDir, "--wait", "host-connected", "--port", name, "--timeout", "60s")
	if err != nil || !strings.Contains(out, " snapshot ") {
		t.Fatalf("events --wait as uid 2000 during the flood: %v, want the snapshot\n%s", err, out)
	}
	t.Logf("events --wait as uid 2000 during the flood answered in %v", time.Since(t1).Round(time.Millisecond))
	if flood.Exited() {
		t.Fatalf("the flood ended before the checks (hold %ds): make the hold longer", hold)
	}

	out, err = flood.Wait(ctx)
	if err != nil {
		t.Fatalf("ctlflood: %v\n%s", err, out)
	}
	kv := ParseKV(lastLine(out))
	t.Logf("ctlflood: %s", strings.TrimSpace(out))
	if kv["idle_open"] != strconv.Itoa(floodIdle) {
		t.Errorf("%s of %d idle connections connected", kv["idle_open"], floodIdle)
	}
	if kv["extra_refused"] != "true" {
		t.Errorf("subscriber %d of uid 1000 was not refused", agent.MaxSubscribersPerUID+1)
	}
	if n, _ := strconv.Atoi(kv["refused"]); n == 0 {
		t.Errorf("no idle connection got the agent's refusal line")
	}
	// Everything is let go: the agent is as before.
	a.waitList(ctx, t, "the flood's subscribers gone", func(l agentList) bool { return l.Agent.Subscribers == 0 })
	if out, err := a.stop(ctx); err != nil {
		t.Fatalf("agent after SIGTERM: %v\n%s", err, out)
	}
}
