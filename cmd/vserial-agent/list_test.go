package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vserial/vserial/agent"
	"github.com/vserial/vserial/agent/agenttest"
	"github.com/vserial/vserial/internal/supervisor"
	"github.com/vserial/vserial/pciscan"
	"github.com/vserial/vserial/pciscan/pciscantest"
)

// fakeFunction writes one PCI function into a sysfs tree under root.
func fakeFunction(t *testing.T, root, addr, vendor, device, subdev, driver string) {
	t.Helper()
	pciscantest.Function(t, root, addr, vendor, device, subdev, driver)
}

// fixedChoice stands in for chooseBind in report tests.
func fixedChoice(pciscan.Function) bindChoice {
	return bindChoice{Bind: bindVFIO, Reason: "IOMMU group 7"}
}

func shortTempDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "vsc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func TestListJSONFormat(t *testing.T) {
	fns := []pciscan.Function{
		{Addr: "0000:00:03.0", Vendor: 0x1af4, Device: 0x1043, SubVendor: 0x1af4, SubDevice: 0x1100, Revision: 1, Class: 0x078000, Path: "/sys/bus/pci/devices/0000:00:03.0"},
		{Addr: "0000:00:04.0", Vendor: 0x8086, Device: 0x10d3, Class: 0x020000, Driver: "e1000e"}, // not a console: left out
	}
	ports := []agent.PortStatus{{
		Device: 0, ID: 1, Name: "org.qemu.guest_agent.0", Mode: agent.ModeListen, Socket: "/run/vserial/org.qemu.guest_agent.0",
		HostConnected: true, ClientConnected: true,
		PortStats:       agent.PortStats{BytesIn: 10, BytesOut: 20, Discarded: 3, Violations: 1},
		RejectedClients: 2,
	}}
	var out bytes.Buffer
	if err := writeJSON(&out, buildReport("/run/vserial", fns, nil, ports, nil, fixedChoice)); err != nil {
		t.Fatal(err)
	}
	const want = `{
  "functions": [
    {
      "addr": "0000:00:03.0",
      "vendor": "1af4",
      "device": "1043",
      "subsystem_vendor": "1af4",
      "subsystem_device": "1100",
      "revision": "01",
      "class": "078000",
      "driver": "",
      "iommu_group": "",
      "path": "/sys/bus/pci/devices/0000:00:03.0",
      "bind": "vfio",
      "bind_reason": "IOMMU group 7"
    }
  ],
  "agent": {
    "socket_dir": "/run/vserial",
    "running": true,
    "ports": [
      {
        "device": 0,
        "id": 1,
        "name": "org.qemu.guest_agent.0",
        "mode": "listen",
        "socket": "/run/vserial/org.qemu.guest_agent.0",
        "host_connected": true,
        "client_connected": true,
        "bytes_in": 10,
        "bytes_out": 20,
        "discarded": 3,
        "violations": 1,
        "rejected_clients": 2
      }
    ]
  }
}
`
	if out.String() != want {
		t.Errorf("list --json output:\n%s\nwant:\n%s", out.String(), want)
	}
}

func TestListJSONEmptyAndErrors(t *testing.T) {
	var out bytes.Buffer
	notRunning := errors.Join(errors.New("dial"), agent.ErrNotRunning)
	writeJSON(&out, buildReport("/d", nil, errors.New("no sysfs"), nil, notRunning, fixedChoice))
	var rep map[string]any
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatal(err)
	}
	// Lists are [] rather than null, so consumers can iterate blindly.
	if !strings.Contains(out.String(), `"functions": []`) || !strings.Contains(out.String(), `"ports": []`) {
		t.Errorf("empty lists not rendered as []: %s", out.String())
	}
	if rep["functions_error"] != "no sysfs" {
		t.Errorf("functions_error = %v", rep["functions_error"])
	}
	ag := rep["agent"].(map[string]any)
	if ag["running"] != false || ag["error"] != nil {
		t.Errorf("agent not running should be running=false and no error: %v", ag)
	}
	out.Reset()
	clash := []agent.PortStatus{{Device: 1, ID: 1, Name: "dup", Socket: "/d/vport1p1", NameProblem: "name clash"}}
	writeJSON(&out, buildReport("/d", nil, nil, clash, nil, fixedChoice))
	if !strings.Contains(out.String(), `"name_problem": "name clash"`) {
		t.Errorf("name_problem missing: %s", out.String())
	}
	out.Reset()
	writeJSON(&out, buildReport("/d", nil, nil, nil, errors.New("agent says: boom"), fixedChoice))
	if !strings.Contains(out.String(), `"error": "agent says: boom"`) {
		t.Errorf("query error missing: %s", out.String())
	}
}

func TestListText(t *testing.T) {
	var out bytes.Buffer
	fns := []pciscan.Function{{Addr: "0000:00:03.0", Vendor: 0x1af4, Device: 0x1003, SubVendor: 0x1af4, SubDevice: 3, Driver: "virtio-pci"}}
	ports := []agent.PortStatus{{Device: 0, ID: 2, Mode: agent.ModeListen, Socket: "/d/vport0p2"},
		{Device: 0, ID: 3, Name: "qga", Mode: agent.ModeConnect, Target: "/run/qga.sock"},
		{Device: 1, ID: 1, Name: "dup", Socket: "/d/vport1p1", NameProblem: "name clash: device 0 port 3 has the socket dup"}}
	writeText(&out, buildReport("/d", fns, nil, ports, nil, fixedChoice))
	for _, want := range []string{"0000:00:03.0", "1af4:1003", "virtio-pci", "/d/vport0p2", "DISCARDED", "BIND (auto)", "vfio (IOMMU group 7)", "MODE", "connect", "→ /run/qga.sock",
		`note: device 1 port 1 "dup" is served as /d/vport1p1: name clash: device 0 port 3 has the socket dup`} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("text output lacks %q:\n%s", want, out.String())
		}
	}
}

// Regression test: list printed host-chosen names raw, so a host could put
// terminal escape sequences on the operator's screen.
func TestListTextEscapesHostNames(t *testing.T) {
	evil := "x\x1b]0;owned\x07\x1b[2J\u009b31m\x7f"
	ports := []agent.PortStatus{
		{Device: 0, ID: 1, Name: evil, Mode: agent.ModeListen, Socket: "/d/vport0p1", NameProblem: "unusable as a file name: " + evil},
		{Device: 0, ID: 2, Name: "ok", Mode: agent.ModeConnect, Target: "/t/" + evil},
	}
	var out bytes.Buffer
	writeText(&out, buildReport("/d", nil, errors.New("scan: "+evil), ports, nil, fixedChoice))
	text := out.String()
	for _, r := range text {
		if r != '\n' && !strconv.IsPrint(r) {
			t.Fatalf("text output holds %U:\n%q", r, text)
		}
	}
	for _, want := range []string{`"x\x1b]0;owned\a\x1b[2J\u009b31m\x7f"`, `→ "/t/x\x1b]0;owned`, `unusable as a file name: x\x1b]0;owned\a`, `cannot scan: scan: x\x1b]0;`} {
		if !strings.Contains(text, want) {
			t.Errorf("text output lacks %s:\n%s", want, text)
		}
	}
}

// listJSON runs `list --json` on socket directory dir and sysfs sys,
// which must exit 0, and decodes what it printed.
func listJSON(t *testing.T, dir, sys string) listReport {
	t.Helper()
	var out, errOut bytes.Buffer
	if code := realMain(context.Background(), []string{"list", "--json", "--socket-dir", dir, "--sysfs", sys}, &out, &errOut, nil); code != exitOK {
		t.Fatalf("list: exit %d: %s", code, errOut.String())
	}
	var rep listReport
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatal(err)
	}
	return rep
}

// TestListAgainstRunningAgent runs `list --json` against a fake sysfs and a
// live agent's control socket.
func TestListAgainstRunningAgent(t *testing.T) {
	sys := shortTempDir(t)
	fakeFunction(t, sys, "0000:00:03.0", "0x1af4", "0x1043", "0x1100", "")
	fakeFunction(t, sys, "0000:00:05.0", "0x1af4", "0x1003", "0x0003", "virtio-pci")
	dir := filepath.Join(shortTempDir(t), "run")

	rep := listJSON(t, dir, sys)
	if rep.Agent.Running || len(rep.Functions) != 2 || rep.Functions[1].Driver != "virtio-pci" {
		t.Errorf("report with no agent: %+v", rep)
	}
	// No IOMMU group in this sysfs: --bind auto would take uio, and says why.
	for _, f := range rep.Functions {
		if f.Bind != bindUIO || f.BindReason != "no IOMMU group" {
			t.Errorf("function %s: bind %q (%q), want uio (no IOMMU group)", f.Addr, f.Bind, f.BindReason)
		}
	}

	a, err := agent.New(agent.Config{SocketDir: dir, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	l, err := a.ListenControl()
	if err != nil {
		t.Fatal(err)
	}
	go a.ServeControl(l)
	p := agenttest.NewPort(1, "named")
	p.SetHostConnected(true)
	a.AddPort(0, p)
	rep = listJSON(t, dir, sys)
	want := agent.PortStatus{Device: 0, ID: 1, Name: "named", Mode: agent.ModeListen, Socket: filepath.Join(dir, "named"), HostConnected: true}
	if !rep.Agent.Running || len(rep.Agent.Ports) != 1 || !reflect.DeepEqual(rep.Agent.Ports[0], want) {
		t.Errorf("agent part of the report: %+v, want one port %+v", rep.Agent, want)
	}
}

// Negotiated feature bits are named; RING_PACKED decides the ring.
func TestDescribeFeatures(t *testing.T) {
	for _, c := range []struct {
		feat  uint64
		ring  string
		flags []string
	}{
		{0, "split", []string{}},
		{1<<1 | 1<<29 | 1<<32, "split", []string{"multiport", "event_idx", "version_1"}},
		{fakeFeatures | 1<<0 | 1<<33, "packed", []string{"multiport", "event_idx", "indirect", "emerg_write", "size", "version_1", "access_platform"}},
	} {
		got := supervisor.DescribeFeatures("vfio type1", c.feat)
		want := agent.DeviceStatus{Binding: "vfio type1", Features: fmt.Sprintf("%#x", c.feat), Ring: c.ring, Flags: c.flags}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("describeFeatures(%#x) = %+v, want %+v", c.feat, got, want)
		}
	}
}

// The text output has one line per device the agent drives.
func TestListTextDevices(t *testing.T) {
	rep := buildReport("/d", nil, nil, nil, nil, fixedChoice)
	rep.Agent.Devices = []agent.DeviceStatus{
		{Index: 0, Addr: "0000:00:04.0", Binding: "uio", Features: "0x530000006", Ring: "packed", Flags: []string{"multiport", "event_idx"}},
		{Index: 2, Addr: "0000:00:05.0", Binding: "vfio no-IOMMU", Features: "0x100000002", Ring: "split", Flags: []string{"multiport"}},
	}
	var out bytes.Buffer
	writeText(&out, rep)
	text := out.String()
	for _, want := range []string{"DEV  FUNCTION", "RING", "0000:00:04.0  uio            packed  0x530000006  multiport,event_idx",
		"2    0000:00:05.0  vfio no-IOMMU  split   0x100000002  multiport"} {
		if !strings.Contains(text, want) {
			t.Errorf("text output lacks %q:\n%s", want, text)
		}
	}
}

// list --json against `run` shows each device the agent drives with what
// was negotiated with it, from the device (describer) through the
// supervisor and the agent's status report.
func TestListDevicesOfRunningAgent(t *testing.T) {
	sys := shortTempDir(t)
	fakeFunction(t, sys, "0000:00:03.0", "0x1af4", "0x1043", "0x1100", "")
	fakeFunction(t, sys, "0000:00:04.0", "0x1af4", "0x1043", "0x1100", "")
	h := startRun(t, sys, nil, nil)
	h.device(1)
	waitFile(t, agent.ControlPath(h.dir))
	var rep listReport
	deadline := time.Now().Add(patience)
	for len(rep.Agent.Devices) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("list --json never showed two devices: %+v", rep.Agent)
		}
		time.Sleep(5 * time.Millisecond)
		rep = listJSON(t, h.dir, sys)
	}
	for i, addr := range []string{"0000:00:03.0", "0000:00:04.0"} {
		want := supervisor.DescribeFeatures("uio", fakeFeatures)
		want.Index, want.Addr = i, addr
		if !reflect.DeepEqual(rep.Agent.Devices[i], want) {
			t.Errorf("device %d: %+v, want %+v", i, rep.Agent.Devices[i], want)
		}
	}
	h.cancel()
	if code := h.wait(); code != exitOK {
		t.Errorf("run exit %d", code)
	}
}

func TestListBadSysfsExits1(t *testing.T) {
	var out, errOut bytes.Buffer
	code := realMain(context.Background(), []string{"list", "--socket-dir", shortTempDir(t), "--sysfs", "/nonexistent"}, &out, &errOut, nil)
	if code != exitFailure || !strings.Contains(out.String(), "cannot scan") {
		t.Errorf("exit %d, output %q", code, out.String())
	}
}
