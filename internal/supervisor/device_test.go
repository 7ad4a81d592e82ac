package supervisor

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vserial/vserial/agent"
	"github.com/vserial/vserial/agent/agenttest"
	"github.com/vserial/vserial/driver"
	"github.com/vserial/vserial/driver/drivertest"
	"github.com/vserial/vserial/driver/virtiotest"
	"github.com/vserial/vserial/internal/devopen"
	"github.com/vserial/vserial/pump"
)

const patience = 30 * time.Second

// newFakeFunction is a transitional fake PCI function serving m, closed
// when the test ends.
func newFakeFunction(t *testing.T, m *virtiotest.Console) *virtiotest.Function {
	t.Helper()
	f, err := virtiotest.New(m, virtiotest.Options{Transitional: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
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

func deref[T any](p *T) any {
	if p == nil {
		return nil
	}
	return *p
}

// The driver's resets, protocol violations and budget limits reach the agent's event
// stream through the device, with the device index the agent knows.
func TestDeviceEventsReachTheStream(t *testing.T) {
	m := virtiotest.NewConsole(virtiotest.ConsoleConfig{})
	if err := m.Plug(1, "p", false); err != nil {
		t.Fatal(err)
	}
	f := newFakeFunction(t, m)
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	dir := filepath.Join(shortTempDir(t), "run")
	a, err := agent.New(agent.Config{SocketDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	ln, err := a.ListenControl()
	if err != nil {
		t.Fatal(err)
	}
	go a.ServeControl(ln)

	// A budget that gives port 1 its full buffer set and later ports less.
	if _, err := f.IRQ().PollFDs(); err != nil {
		t.Fatal(err)
	}
	dev, err := driver.Open(ctx, drivertest.Function(f), driver.Config{Index: 2, DMABudget: 4 << 20, ExternalLoop: true})
	if err != nil {
		t.Fatal(err)
	}
	loop, err := pump.New(dev, pump.Options{})
	if err != nil {
		t.Fatal(err)
	}
	od := &devopen.Device{Dev: dev, Loop: loop, Release: func() error { return nil }, GiveBack: func() {}}
	cd := NewDevice(od, Spec{Index: 2, Report: func(ev agent.DeviceEvent) {
		if err := a.ReportDevice(ev); err != nil {
			t.Errorf("ReportDevice(%+v): %v", ev, err)
		}
	}})
	defer cd.Close()
	for _, p := range cd.Present() {
		if err := a.AddPort(2, p); err != nil {
			t.Fatal(err)
		}
	}
	go func() {
		for range cd.Ports() {
		}
	}()
	s, err := agent.SubscribeEvents(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	agenttest.NextEvent(t, s, agent.EventSnapshot)

	// A RESIZE for a port that is not a console: a violation of port 1.
	m.SendControl(1, virtiotest.CtrlResize, 0, []byte{24, 0, 80, 0})
	ev := agenttest.NextEvent(t, s, agent.EventProtocolViolation)
	if deref(ev.Device) != 2 || deref(ev.Port) != uint32(1) || ev.Name != "p" || ev.Socket != filepath.Join(dir, "p") || !strings.Contains(ev.Reason, "RESIZE") || ev.Violations != 1 {
		t.Errorf("protocol_violation %+v", ev)
	}
	// DEVICE_NEEDS_RESET: the driver resets the device.
	m.NeedsReset()
	ev = agenttest.NextEvent(t, s, agent.EventDeviceReset)
	if deref(ev.Device) != 2 || ev.Port != nil || !strings.Contains(ev.Reason, "DEVICE_NEEDS_RESET") {
		t.Errorf("device_reset %+v", ev)
	}
	// A hot-plugged port beyond the DMA budget's full sets.
	if err := m.Plug(5, "q", false); err != nil {
		t.Fatal(err)
	}
	ev = agenttest.NextEvent(t, s, agent.EventDeviceLimited)
	if deref(ev.Device) != 2 || !strings.Contains(ev.Reason, "port 5 and later ports get 8 receive") {
		t.Errorf("device_limited %+v", ev)
	}
}
