package agent_test

import (
	"bufio"
	"errors"
	"net"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/vserial/vserial/agent"
	"github.com/vserial/vserial/agent/agenttest"
)

func serveControl(t *testing.T, a *agent.Agent) {
	t.Helper()
	l, err := a.ListenControl()
	if err != nil {
		t.Fatal(err)
	}
	serveOn(t, a, l)
}

// serveOn runs ServeControl on l until the end of the test.
func serveOn(t *testing.T, a *agent.Agent, l net.Listener) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- a.ServeControl(l) }()
	t.Cleanup(func() {
		a.Close()
		// ErrClosed: the test ended before ServeControl started.
		if err := <-done; err != nil && !errors.Is(err, agent.ErrClosed) {
			t.Errorf("ServeControl: %v", err)
		}
	})
}

func TestControlStatus(t *testing.T) {
	a := newAgent(t, agent.Config{})
	serveControl(t, a)
	p := agenttest.NewPort(1, "org.qemu.guest_agent.0")
	p.SetHostConnected(true)
	addPort(t, a, 0, p)
	addPort(t, a, 1, agenttest.NewPort(2, ""))
	c := connectClient(t, p, filepath.Join(a.Dir(), "org.qemu.guest_agent.0"))
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	waitPort(t, p, "bytes", func(s agenttest.State) bool { return s.Stats.BytesOut == 5 })

	got, err := agent.QueryStatus(waitCtx(t), a.Dir())
	if err != nil {
		t.Fatal(err)
	}
	want := []agent.PortStatus{
		{Device: 0, ID: 1, Name: "org.qemu.guest_agent.0", Mode: agent.ModeListen, Socket: filepath.Join(a.Dir(), "org.qemu.guest_agent.0"),
			HostConnected: true, ClientConnected: true, PortStats: agent.PortStats{BytesOut: 5}},
		{Device: 1, ID: 2, Mode: agent.ModeListen, Socket: filepath.Join(a.Dir(), "vport1p2")},
	}
	if len(got) != len(want) {
		t.Fatalf("QueryStatus = %+v, want %+v", got, want)
	}
	for i := range want {
		if !reflect.DeepEqual(got[i], want[i]) {
			t.Errorf("port %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestControlBadRequest(t *testing.T) {
	a := newAgent(t, agent.Config{})
	serveControl(t, a)
	for _, req := range []string{`{"op":"reboot"}`, `not json`} {
		line, err := controlExchange(t, a, req)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(line, `"error"`) {
			t.Errorf("request %q: answer %q, want an error", req, line)
		}
	}
}

func TestQueryStatusNoAgent(t *testing.T) {
	dir := shortTempDir(t)
	_, err := agent.QueryStatus(waitCtx(t), dir)
	if !errors.Is(err, agent.ErrNotRunning) {
		t.Errorf("no control socket: %v, want ErrNotRunning", err)
	}
	staleSocket(t, agent.ControlPath(dir))
	_, err = agent.QueryStatus(waitCtx(t), dir)
	if !errors.Is(err, agent.ErrNotRunning) {
		t.Errorf("stale control socket: %v, want ErrNotRunning", err)
	}
}

// controlExchange sends one request line on a's control socket and returns
// the first line of the answer.
func controlExchange(t *testing.T, a *agent.Agent, req string) (string, error) {
	t.Helper()
	c, err := net.Dial("unix", agent.ControlPath(a.Dir()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(req + "\n")); err != nil {
		return "", err
	}
	return bufio.NewReader(c).ReadString('\n')
}
