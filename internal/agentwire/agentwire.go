// Package agentwire converts the driver's and the data plane's terms into
// the socket agent's (package agent knows neither), for internal/supervisor,
// which wires them together for `vserial-agent run` and package vserial.
package agentwire

import (
	"github.com/vserial/vserial/agent"
	"github.com/vserial/vserial/driver"
	"github.com/vserial/vserial/pump"
)

// Stats returns p's counters as the agent reports them, with the loop's
// when loop is not nil: the port's own, and the device's under "loop_"
// (the same for every port of the device).
func Stats(p *driver.Port, loop *pump.Loop) agent.PortStats {
	s := p.Stats()
	out := agent.PortStats{BytesIn: s.BytesIn, BytesOut: s.BytesOut, Discarded: s.Discarded, Violations: s.Violations}
	if loop != nil {
		out.Counters = loop.PortCounters(p.ID())
		for k, v := range loop.Counters() {
			out.Counters["loop_"+k] = v
		}
	}
	return out
}

// DeviceEvent is a driver's device event (a reset, a protocol violation,
// a limit reached) of device dev for the agent's event stream.
func DeviceEvent(dev int, ev driver.Event) agent.DeviceEvent {
	out := agent.DeviceEvent{Kind: agent.EventDeviceReset, Device: dev, Violations: ev.Violations, Reason: "unknown"}
	switch ev.Kind {
	case driver.ProtocolViolation:
		out.Kind = agent.EventProtocolViolation
	case driver.DeviceLimited:
		out.Kind = agent.EventDeviceLimited
	}
	if ev.Err != nil {
		out.Reason = ev.Err.Error()
	}
	if ev.Port != nil {
		id := ev.Port.ID()
		out.Port = &id
	}
	return out
}
