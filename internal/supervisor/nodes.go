package supervisor

import (
	"fmt"
	"log/slog"

	"github.com/vserial/vserial/agent"
	"github.com/vserial/vserial/internal/portnode"
)

// Device nodes (run --nodes, node=on|off; docs/nodes.md): package
// portnode makes them; the supervisor only says which ports get one and
// shares each port between its socket, its node and Dial (sockPort).

// NodeWant says which ports get a node: node= of the port's own
// configuration, else the default's, else all; never a port in ignore
// mode. nil when no port can have one.
func NodeWant(all bool, ports map[string]agent.PortConfig, def agent.PortConfig) func(name string) bool {
	some := all || def.Node != nil && *def.Node
	for _, c := range ports {
		some = some || c.Node != nil && *c.Node
	}
	if !some {
		return nil
	}
	return func(name string) bool {
		c, ok := ports[name]
		if !ok {
			c = def
		}
		switch {
		case c.Mode == agent.ModeIgnore:
			return false
		case c.Node != nil:
			return *c.Node
		case def.Node != nil:
			return *def.Node
		}
		return all
	}
}

// newNodes prepares the nodes of the device spec opens, or nil.
func newNodes(spec Spec, log *slog.Logger) *portnode.Device {
	if spec.Nodes == nil {
		return nil
	}
	return portnode.NewDevice(portnode.Config{
		Index:  spec.Index,
		Want:   spec.Nodes,
		Logger: log,
		Failed: func(id uint32, reason string) {
			if spec.Report != nil {
				spec.Report(agent.DeviceEvent{Kind: agent.EventNodeFailed, Device: spec.Index, Port: &id, Reason: fmt.Sprint("device node: ", reason)})
			}
		},
	})
}
