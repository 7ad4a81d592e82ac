package agent_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vserial/vserial/agent"
	"github.com/vserial/vserial/agent/agenttest"
)

// subscribe opens an event stream and returns it with its snapshot.
func subscribe(t *testing.T, a *agent.Agent) (*agent.EventStream, agent.Event) {
	t.Helper()
	s, err := agent.SubscribeEvents(waitCtx(t), a.Dir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	ev, _, err := s.Next()
	if err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	if ev.Event != agent.EventSnapshot || ev.Status == nil {
		t.Fatalf("first line %+v, want the snapshot", ev)
	}
	return s, ev
}

// next reads the next event of s, skipping none, and checks its kind.
func next(t *testing.T, s *agent.EventStream, want agent.EventKind) agent.Event {
	t.Helper()
	ev, line, err := s.Next()
	if err != nil {
		t.Fatalf("waiting for %s: %v", want, err)
	}
	if ev.Event != want {
		t.Fatalf("event %s (%s), want %s", ev.Event, line, want)
	}
	if ev.Time.IsZero() || ev.Time.Location() != time.UTC {
		t.Errorf("%s: time %v, want a UTC timestamp", ev.Event, ev.Time)
	}
	return ev
}

// checkPort checks the port fields of a port event.
func checkPort(t *testing.T, ev agent.Event, dev int, id uint32, name, socket string) {
	t.Helper()
	if ev.Device == nil || *ev.Device != dev || ev.Port == nil || *ev.Port != id || ev.Name != name || ev.Socket != socket {
		t.Errorf("%s: device %v port %v name %q socket %q, want %d %d %q %q", ev.Event, deref(ev.Device), deref(ev.Port), ev.Name, ev.Socket, dev, id, name, socket)
	}
}

func deref[T any](p *T) any {
	if p == nil {
		return nil
	}
	return *p
}

func TestEventsSnapshotThenEventsInOrder(t *testing.T) {
	a := newAgent(t, agent.Config{})
	serveControl(t, a)
	p1 := agenttest.NewPort(1, "one")
	p1.SetHostConnected(true)
	addPort(t, a, 0, p1)

	s, snap := subscribe(t, a)
	if st := snap.Status; st.SocketDir != a.Dir() || !st.Running || st.Subscribers != 1 || len(st.Ports) != 1 || st.Ports[0].Name != "one" || !st.Ports[0].HostConnected {
		t.Fatalf("snapshot %+v, want port one, host connected", st)
	}
	sock1 := filepath.Join(a.Dir(), "one")

	// Host away and back.
	p1.SetHostConnected(false)
	checkPort(t, next(t, s, agent.EventHostDisconnected), 0, 1, "one", sock1)
	p1.SetHostConnected(true)
	checkPort(t, next(t, s, agent.EventHostConnected), 0, 1, "one", sock1)

	// A client, a second one turned away, the first one leaving.
	c := connectClient(t, p1, sock1)
	ev := next(t, s, agent.EventClientConnected)
	checkPort(t, ev, 0, 1, "one", sock1)
	if ev.PeerPID == nil || ev.PeerUID == nil {
		t.Errorf("client_connected without peer credentials: %+v", ev)
	}
	c2 := dial(t, sock1)
	expectClosed(t, c2)
	ev = next(t, s, agent.EventClientRejected)
	checkPort(t, ev, 0, 1, "one", sock1)
	if ev.Rejected != 1 {
		t.Errorf("rejected_total %d, want 1", ev.Rejected)
	}
	c.Close()
	ev = next(t, s, agent.EventClientDisconnected)
	checkPort(t, ev, 0, 1, "one", sock1)
	if ev.Reason != "client closed" {
		t.Errorf("client_disconnected reason %q", ev.Reason)
	}

	// A port that gets its name late: added under its fallback, renamed.
	p2 := agenttest.NewPort(2, "")
	addPort(t, a, 1, p2)
	fallback := filepath.Join(a.Dir(), "vport1p2")
	ev = next(t, s, agent.EventPortAdded)
	checkPort(t, ev, 1, 2, "", fallback)
	if ev.HostConnected == nil || *ev.HostConnected {
		t.Errorf("port_added host_connected %v, want false", deref(ev.HostConnected))
	}
	p2.SetName("two")
	ev = next(t, s, agent.EventPortRenamed)
	checkPort(t, ev, 1, 2, "two", filepath.Join(a.Dir(), "two"))
	if ev.OldName != "" || ev.OldSocket != fallback {
		t.Errorf("port_renamed old name %q old socket %q, want \"\" %q", ev.OldName, ev.OldSocket, fallback)
	}

	// A console and its size.
	p3 := agenttest.NewPort(3, "con")
	p3.SetConsole()
	p3.SetSize(80, 24)
	addPort(t, a, 0, p3)
	next(t, s, agent.EventPortAdded)
	ev = next(t, s, agent.EventConsoleResize)
	if ev.Cols != 80 || ev.Rows != 24 {
		t.Errorf("console_resize %dx%d, want 80x24", ev.Cols, ev.Rows)
	}
	p3.SetSize(132, 50)
	ev = next(t, s, agent.EventConsoleResize)
	checkPort(t, ev, 0, 3, "con", filepath.Join(a.Dir(), "con"))
	if ev.Cols != 132 || ev.Rows != 50 {
		t.Errorf("console_resize %dx%d, want 132x50", ev.Cols, ev.Rows)
	}

	// Device-level events, as the wiring reports them.
	if err := a.ReportDevice(agent.DeviceEvent{Kind: agent.EventDeviceReset, Device: 0, Reason: "used id 9 out of range", Violations: 3}); err != nil {
		t.Fatal(err)
	}
	ev = next(t, s, agent.EventDeviceReset)
	if deref(ev.Device) != 0 || ev.Port != nil || ev.Reason != "used id 9 out of range" || ev.Violations != 3 {
		t.Errorf("device_reset %+v", ev)
	}
	id := uint32(1)
	if err := a.ReportDevice(agent.DeviceEvent{Kind: agent.EventProtocolViolation, Device: 0, Port: &id, Reason: "bad name"}); err != nil {
		t.Fatal(err)
	}
	ev = next(t, s, agent.EventProtocolViolation)
	checkPort(t, ev, 0, 1, "one", sock1)
	if err := a.ReportDevice(agent.DeviceEvent{Kind: agent.EventNodeFailed, Device: 0, Port: &id, Reason: "device node: /dev/cuse missing"}); err != nil {
		t.Fatal(err)
	}
	ev = next(t, s, agent.EventNodeFailed)
	checkPort(t, ev, 0, 1, "one", sock1)
	if ev.Reason != "device node: /dev/cuse missing" {
		t.Errorf("node_failed reason %q", ev.Reason)
	}

	// Unplug.
	p2.Remove()
	ev = next(t, s, agent.EventPortRemoved)
	checkPort(t, ev, 1, 2, "two", filepath.Join(a.Dir(), "two"))
	if ev.Reason == "" {
		t.Error("port_removed without a reason")
	}

	// The agent closing: every port removed, then the last line, then EOF.
	a.Close()
	removed := map[uint32]bool{}
	for {
		ev, line, err := s.Next()
		if err != nil {
			t.Fatalf("after Close: %v", err)
		}
		if ev.Event == agent.EventAgentStopping {
			break
		}
		if ev.Event != agent.EventPortRemoved {
			t.Fatalf("after Close: %s, want port_removed or agent_stopping", line)
		}
		removed[*ev.Port] = true
	}
	if !removed[1] || !removed[3] || len(removed) != 2 {
		t.Errorf("ports removed at Close: %v, want 1 and 3", removed)
	}
	if _, _, err := s.Next(); !errors.Is(err, io.EOF) {
		t.Errorf("after agent_stopping: %v, want EOF", err)
	}
}

func TestEventsManySubscribers(t *testing.T) {
	a := newAgent(t, agent.Config{})
	serveControl(t, a)
	var streams []*agent.EventStream
	for range 5 {
		s, _ := subscribe(t, a)
		streams = append(streams, s)
	}
	p := agenttest.NewPort(4, "four")
	addPort(t, a, 0, p)
	p.SetHostConnected(true)
	for i, s := range streams {
		if ev := next(t, s, agent.EventPortAdded); deref(ev.Port) != uint32(4) {
			t.Errorf("subscriber %d: %+v", i, ev)
		}
		next(t, s, agent.EventHostConnected)
	}
	// One leaving does not disturb the others.
	streams[0].Close()
	waitFor(t, "subscriber gone", func() bool { return a.Subscribers() == 4 })
	p.SetHostConnected(false)
	for _, s := range streams[1:] {
		next(t, s, agent.EventHostDisconnected)
	}
}

// A subscriber that reads nothing never blocks the agent: it is cut off
// with an overflow line, and the others carry on.
func TestEventsSlowSubscriberOverflows(t *testing.T) {
	a := newAgent(t, agent.Config{})
	serveControl(t, a)
	agent.SetEventQueue(a, 8)
	stuck, _ := subscribe(t, a)
	// Enough events to fill the socket buffer and then the queue.
	const n = 20000
	t0 := time.Now()
	for i := range n {
		if err := a.ReportDevice(agent.DeviceEvent{Kind: agent.EventProtocolViolation, Device: 0, Reason: fmt.Sprintf("violation %d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	if d := time.Since(t0); d > 10*time.Second {
		t.Errorf("publishing %d events took %v: a stuck subscriber slowed the agent", n, d)
	}
	waitFor(t, "the stuck subscriber cut off", func() bool { return a.Subscribers() == 0 })
	// It gets what was queued, then the overflow line, then EOF.
	got := 0
	for {
		ev, line, err := stuck.Next()
		if err != nil {
			t.Fatalf("after %d events: %v, want an overflow line", got, err)
		}
		if ev.Event == agent.EventOverflow {
			if !strings.Contains(ev.Reason, "did not keep up") {
				t.Errorf("overflow reason %q", ev.Reason)
			}
			break
		}
		if ev.Event != agent.EventProtocolViolation || ev.Reason != fmt.Sprintf("violation %d", got) {
			t.Fatalf("event %d: %s: events out of order or lost before the overflow", got, line)
		}
		got++
	}
	if got >= n {
		t.Errorf("all %d events arrived before the overflow", got)
	}
	if _, _, err := stuck.Next(); !errors.Is(err, io.EOF) {
		t.Errorf("after overflow: %v, want EOF", err)
	}
	// A fresh subscription works.
	s, _ := subscribe(t, a)
	a.ReportDevice(agent.DeviceEvent{Kind: agent.EventDeviceReset, Device: 1, Reason: "again"})
	next(t, s, agent.EventDeviceReset)
}

func TestEventsSubscriberLimit(t *testing.T) {
	a := newAgent(t, agent.Config{})
	setUID := uidSeam(a)
	serveControl(t, a)
	// As many users as it takes to fill every slot.
	for i := range agent.MaxSubscribers {
		setUID(uint32(1000 + i/agent.MaxSubscribersPerUID))
		subscribe(t, a)
	}
	setUID(2000)
	s, err := agent.SubscribeEvents(waitCtx(t), a.Dir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, _, err := s.Next(); err == nil || !strings.Contains(err.Error(), "too many event subscribers") {
		t.Errorf("subscriber %d: %v, want too many subscribers", agent.MaxSubscribers+1, err)
	}
	// Status still answers.
	if _, err := agent.QueryStatus(waitCtx(t), a.Dir()); err != nil {
		t.Errorf("status with a full house of subscribers: %v", err)
	}
}

func TestControlRequestChecked(t *testing.T) {
	a := newAgent(t, agent.Config{})
	serveControl(t, a)
	for req, want := range map[string]string{
		`{"op":"reboot"}`:                 `unknown op \"reboot\"`,
		`not json`:                        `bad request`,
		`{"op":"events","since":5}`:       `unknown field \"since\"`,
		`{"op":"status"} {"op":"status"}`: `more than one JSON value`,
		`{}`:                              `no \"op\"`,
		`{"op":5}`:                        `bad request`,
		strings.Repeat(" ", 5000):         `longer than 4096 bytes`,
	} {
		line, err := controlExchange(t, a, req)
		if err != nil {
			t.Errorf("request %.20q: %v", req, err)
			continue
		}
		if !strings.Contains(line, `"error"`) || !strings.Contains(line, want) {
			t.Errorf("request %.20q: answer %q, want an error with %q", req, line, want)
		}
	}
}

func TestReportDeviceChecksInput(t *testing.T) {
	a := newAgent(t, agent.Config{})
	for _, ev := range []agent.DeviceEvent{
		{Kind: agent.EventHostConnected, Device: 0, Reason: "x"},
		{Kind: agent.EventDeviceReset, Device: -1, Reason: "x"},
		{Kind: agent.EventDeviceReset, Device: 0},
	} {
		if err := a.ReportDevice(ev); err == nil {
			t.Errorf("ReportDevice(%+v) accepted", ev)
		}
	}
	a.Close()
	if err := a.ReportDevice(agent.DeviceEvent{Kind: agent.EventDeviceFailed, Reason: "x"}); !errors.Is(err, agent.ErrClosed) {
		t.Errorf("after Close: %v, want ErrClosed", err)
	}
}

// A subscriber that goes away is forgotten at once, not at the next event.
func TestEventsSubscriberLeaving(t *testing.T) {
	a := newAgent(t, agent.Config{})
	serveControl(t, a)
	ctx, cancel := context.WithCancel(waitCtx(t))
	s, err := agent.SubscribeEvents(ctx, a.Dir())
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Next(); err != nil {
		t.Fatal(err)
	}
	cancel()
	if _, _, err := s.Next(); !errors.Is(err, context.Canceled) {
		t.Errorf("Next after the context ended: %v", err)
	}
	s.Close()
	waitFor(t, "subscriber forgotten", func() bool { return a.Subscribers() == 0 })
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(patience)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// In connect mode the dialed connection is the client: its events carry
// the target and come and go with the connection.
func TestEventsConnectMode(t *testing.T) {
	target := filepath.Join(shortTempDir(t), "qga.sock")
	a := newAgent(t, connectConfig(target))
	serveControl(t, a)
	s, _ := subscribe(t, a)
	p := agenttest.NewPort(1, "qga")
	p.SetHostConnected(true)
	addPort(t, a, 0, p)
	ev := next(t, s, agent.EventPortAdded)
	if ev.Target != target || ev.Socket != "" || ev.HostConnected == nil || !*ev.HostConnected {
		t.Errorf("port_added %+v, want target %s, no socket, host connected", ev, target)
	}
	ln := listenTarget(t, target)
	c := acceptAgent(t, ln)
	ev = next(t, s, agent.EventClientConnected)
	checkPort(t, ev, 0, 1, "qga", "")
	if ev.Target != target || ev.PeerPID == nil {
		t.Errorf("client_connected %+v, want target %s and the listener's credentials", ev, target)
	}
	c.Close()
	ev = next(t, s, agent.EventClientDisconnected)
	if ev.Target != target || ev.Reason != "client closed" {
		t.Errorf("client_disconnected %+v", ev)
	}
}

// A console with a terminal: console_resize says which pty got the size.
func TestEventsConsoleResizeNamesThePTY(t *testing.T) {
	a := newAgent(t, agent.Config{Console: agent.ConsoleConfig{PTY: true}})
	serveControl(t, a)
	s, _ := subscribe(t, a)
	p := agenttest.NewPort(0, "con")
	p.SetConsole()
	addPort(t, a, 0, p)
	next(t, s, agent.EventPortAdded)
	link := filepath.Join(a.Dir(), "con"+agent.PTYSuffix)
	waitFor(t, "console symlink", func() bool { return exists(link) })
	p.SetSize(100, 40)
	ev := next(t, s, agent.EventConsoleResize)
	tty, err := os.Readlink(link)
	if err != nil {
		t.Fatal(err)
	}
	if ev.Cols != 100 || ev.Rows != 40 || ev.PTY != tty {
		t.Errorf("console_resize %+v, want 100x40 on %s", ev, tty)
	}
}
