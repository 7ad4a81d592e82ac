package main

import (
	"context"
	"fmt"

	"github.com/vserial/vserial/agent"
	"github.com/vserial/vserial/internal/portnode"
)

// Device nodes (run --nodes, node=on|off; docs/nodes.md): package
// portnode makes them; run only says which ports get one.

// nodeWant says which ports get a node: node= of the port's configuration
// (its own entry, else the default's), else --nodes; never a port in
// ignore mode. nil when no port can have one.
func nodeWant(cfg runConfig) func(name string) bool {
	some := cfg.Nodes || cfg.Agent.Default.Node != nil && *cfg.Agent.Default.Node
	for _, c := range cfg.Agent.Ports {
		some = some || c.Node != nil && *c.Node
	}
	if !some {
		return nil
	}
	return func(name string) bool {
		c, ok := cfg.Agent.Ports[name]
		if !ok {
			c = cfg.Agent.Default
		}
		switch {
		case c.Mode == agent.ModeIgnore:
			return false
		case c.Node != nil:
			return *c.Node
		case cfg.Agent.Default.Node != nil:
			return *cfg.Agent.Default.Node
		}
		return cfg.Nodes
	}
}

// newNodes prepares the nodes of the device spec opens, or nil.
func newNodes(spec deviceSpec) *portnode.Device {
	if spec.Nodes == nil {
		return nil
	}
	return portnode.NewDevice(portnode.Config{
		Index:  spec.Index,
		Want:   spec.Nodes,
		Logger: spec.Logger,
		Failed: func(id uint32, reason string) {
			if spec.Report != nil {
				spec.Report(agent.DeviceEvent{Kind: agent.EventNodeFailed, Device: spec.Index, Port: &id, Reason: fmt.Sprint("device node: ", reason)})
			}
		},
	})
}

// nodePort is a loopPort that may also have a device node: the socket's
// client and the node's opener share the port (whoever opens first holds
// it; the other is refused).
type nodePort struct {
	loopPort
	n *portnode.Port
}

func (p nodePort) SetGuestOpen(ctx context.Context, open bool) error {
	return p.n.SetGuestOpen(ctx, open)
}

var _ agent.FDServer = nodePort{}
