package main

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/vserial/vserial/agent"
	"github.com/vserial/vserial/agent/agenttest"
)

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
	agenttest.NextEvent(t, s, agent.EventSnapshot)
	d.fail(errors.New("device reset failed"))
	ev := agenttest.NextEvent(t, s, agent.EventDeviceFailed)
	if deref(ev.Device) != 0 || ev.Reason != "device reset failed" {
		t.Errorf("device_failed %+v", ev)
	}
	agenttest.NextEvent(t, s, agent.EventAgentStopping)
	if code := h.wait(); code != exitFailure {
		t.Fatalf("exit %d, want %d", code, exitFailure)
	}
}
