package qemu

import (
	"context"
	"fmt"
	"path"
	"strconv"
	"strings"
	"time"
)

// AgentSocketDir is where StartAgent has vserial-agent publish its ports.
const AgentSocketDir = "/run/vserial"

// AgentSocket is the guest path of the agent's socket for a named port.
func AgentSocket(name string) string { return path.Join(AgentSocketDir, name) }

// StartAgent starts `vserial-agent run --socket-dir /run/vserial ARGS...`
// in the guest, in the background. Boot the guest with BuildAgent(t) in
// Options.Files. Stop it with Proc.Signal(ctx, 15) and Proc.Wait.
func StartAgent(ctx context.Context, g *Guest, args ...string) (*Proc, error) {
	return StartAgentAt(ctx, g, AgentPath, args...)
}

// StartAgentAt is StartAgent for the agent binary at path in the guest
// (another build beside AgentPath, as the benchmark's B arm).
func StartAgentAt(ctx context.Context, g *Guest, path string, args ...string) (*Proc, error) {
	argv := append([]string{path, "run", "--socket-dir", AgentSocketDir}, args...)
	return g.Start(ctx, argv...)
}

// WaitPath waits until path exists in the guest (an agent socket, a device
// node), for at most timeout.
func (g *Guest) WaitPath(ctx context.Context, path string, timeout time.Duration) error {
	_, err := g.Run(ctx, "wait-path", path, strconv.FormatFloat(timeout.Seconds(), 'f', 3, 64))
	return err
}

// Signal sends signal number sig to the process in the guest.
func (p *Proc) Signal(ctx context.Context, sig int) error {
	_, err := p.g.Run(ctx, "signal", strconv.Itoa(p.Pid), strconv.Itoa(sig))
	return err
}

// ReleaseKernelDriver unbinds every PCI function the in-kernel virtio-pci
// driver holds, so that vserial-agent can take the device in the same boot
// (for a side-by-side comparison). It returns the PCI addresses released.
func ReleaseKernelDriver(ctx context.Context, g *Guest) ([]string, error) {
	const drv = "/sys/bus/pci/drivers/virtio-pci"
	out, err := g.Run(ctx, "ls", drv)
	if err != nil {
		return nil, err
	}
	var addrs []string
	for _, name := range strings.Fields(out) {
		if strings.Count(name, ":") != 2 { // 0000:00:03.0; skip bind, unbind, module...
			continue
		}
		if _, err := g.Run(ctx, "write", drv+"/unbind", name); err != nil {
			return addrs, fmt.Errorf("unbinding %s from virtio-pci: %w", name, err)
		}
		addrs = append(addrs, name)
	}
	return addrs, nil
}
