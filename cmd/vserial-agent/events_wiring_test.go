package main

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vserial/vserial/agent"
	"github.com/vserial/vserial/driver"
	"github.com/vserial/vserial/driver/virtiotest"
)

// nextOf reads s until an event of kind want; it fails on the end of the
// stream.
func nextOf(t *testing.T, s *agent.EventStream, want agent.EventKind) agent.Event {
	t.Helper()
	for {
		ev, line, err := s.Next()
		if err != nil {
			t.Fatalf("waiting for %s: %v", want, err)
		}
		if ev.Event == want {
			return ev
		}
		t.Logf("skipping %s", line)
	}
}

// The driver's resets, protocol violations and budget limits reach the agent's event
// stream through the wiring, with the device index the agent knows.
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
	dev, err := driver.Open(ctx, fakeFn{f}, driver.Config{Index: 2, DMABudget: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	cd := newConsoleDevice(dev, nil, func() error { return nil }, func() {}, 2, func(ev agent.DeviceEvent) {
		if err := a.ReportDevice(ev); err != nil {
			t.Errorf("ReportDevice(%+v): %v", ev, err)
		}
	}, nil)
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
	nextOf(t, s, agent.EventSnapshot)

	// A RESIZE for a port that is not a console: a violation of port 1.
	m.SendControl(1, virtiotest.EventResize, 0, []byte{24, 0, 80, 0})
	ev := nextOf(t, s, agent.EventProtocolViolation)
	if deref(ev.Device) != 2 || deref(ev.Port) != uint32(1) || ev.Name != "p" || ev.Socket != filepath.Join(dir, "p") || !strings.Contains(ev.Reason, "RESIZE") || ev.Violations != 1 {
		t.Errorf("protocol_violation %+v", ev)
	}
	// DEVICE_NEEDS_RESET: the driver resets the device.
	m.NeedsReset()
	ev = nextOf(t, s, agent.EventDeviceReset)
	if deref(ev.Device) != 2 || ev.Port != nil || !strings.Contains(ev.Reason, "DEVICE_NEEDS_RESET") {
		t.Errorf("device_reset %+v", ev)
	}
	// A hot-plugged port beyond the DMA budget's full sets.
	if err := m.Plug(5, "q", false); err != nil {
		t.Fatal(err)
	}
	ev = nextOf(t, s, agent.EventDeviceLimited)
	if deref(ev.Device) != 2 || !strings.Contains(ev.Reason, "port 5 and later ports get 8 receive") {
		t.Errorf("device_limited %+v", ev)
	}
}

func deref[T any](p *T) any {
	if p == nil {
		return nil
	}
	return *p
}

// A device that stops for good is reported as device_failed by run.
func TestRunReportsDeviceFailure(t *testing.T) {
	sys := shortTempDir(t)
	fakeFunction(t, sys, "0000:00:03.0", "0x1af4", "0x1043", "0x1100", "")
	h := startRun(t, sys, nil, nil)
	d := h.device(0)
	waitFile(t, agent.ControlPath(h.dir))
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	var s *agent.EventStream
	for {
		var err error
		s, err = agent.SubscribeEvents(ctx, h.dir)
		if err == nil {
			break
		}
		if !errors.Is(err, agent.ErrNotRunning) {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Millisecond)
	}
	defer s.Close()
	nextOf(t, s, agent.EventSnapshot)
	d.fail(errors.New("device reset failed"))
	ev := nextOf(t, s, agent.EventDeviceFailed)
	if deref(ev.Device) != 0 || ev.Reason != "device reset failed" {
		t.Errorf("device_failed %+v", ev)
	}
	nextOf(t, s, agent.EventAgentStopping)
	if code := h.wait(); code != exitFailure {
		t.Fatalf("exit %d, want %d", code, exitFailure)
	}
}
