package agent_test

import (
	"errors"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/vserial/vserial/agent"
	"github.com/vserial/vserial/agent/agenttest"
)

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

// The status answer carries what SetDevices's func describes, asked at
// each request, and nothing without one.
func TestControlStatusDevices(t *testing.T) {
	a := newAgent(t, agent.Config{})
	serveControl(t, a)
	rep, err := agent.QueryReport(waitCtx(t), a.Dir())
	if err != nil {
		t.Fatal(err)
	}
	if rep.Devices != nil {
		t.Errorf("devices %+v without SetDevices", rep.Devices)
	}
	want := []agent.DeviceStatus{{Index: 0, Addr: "0000:00:04.0", Binding: "uio", Features: "0x500000003",
		Ring: "packed", Flags: []string{"multiport", "event_idx"}}}
	a.SetDevices(func() []agent.DeviceStatus { return want })
	rep, err = agent.QueryReport(waitCtx(t), a.Dir())
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(rep.Devices, want) {
		t.Errorf("devices %+v, want %+v", rep.Devices, want)
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
