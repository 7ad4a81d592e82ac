package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// TestHelpTeaches checks that the help of the command and of each
// subcommand says what it does, shows examples, lists its exit codes and
// says where the sockets appear, and that every flag it accepts is listed.
func TestHelpTeaches(t *testing.T) {
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"--help"}, []string{"userspace virtio-console", "Usage:", "Examples:", "Exit codes:", "/run/vserial/NAME", "vport<D>p<N>", ".control", "vserial-agent run", "vserial-agent list", "vserial-agent events", "Type=notify", "README", "vfio-pci", "--bind vfio"}},
		{[]string{"help"}, []string{"Usage:", "Examples:", "Exit codes:"}},
		{[]string{"run", "--help"}, []string{"Usage: vserial-agent run", "Examples:", "Exit codes:", "SOCKET_DIR/NAME", "vport<D>p<N>", "SIGTERM", "NOTIFY_SOCKET", "READY=1", "clash", "--socket-dir", "--socket-mode", "--device", "--max-ports", "--log-level", "--bind",
			"vfio-pci", "type1", "intel_iommu=on", "enable_unsafe_noiommu_mode=1", "uio_pci_generic", "auto (the default)"}},
		{[]string{"help", "run"}, []string{"Usage: vserial-agent run", "Examples:"}},
		{[]string{"list", "-h"}, []string{"Usage: vserial-agent list", "Examples:", "Exit codes:", ".control", "--json", "--socket-dir", "--bind auto", "vfio (IOMMU group 5)"}},
		{[]string{"help", "list"}, []string{"Usage: vserial-agent list"}},
		{[]string{"events", "--help"}, []string{"Usage: vserial-agent events", "Examples:", "Exit codes:", ".control", "snapshot", "overflow",
			"host_connected", "device_reset", "protocol_violation", "--json", "--socket-dir", "--wait", "--port", "--timeout", "host-connected"}},
		{[]string{"help", "events"}, []string{"Usage: vserial-agent events"}},
	} {
		var stdout, stderr bytes.Buffer
		if code := realMain(context.Background(), c.args, &stdout, &stderr, nil); code != exitOK {
			t.Errorf("%v: exit %d, want 0", c.args, code)
		}
		if stderr.Len() != 0 {
			t.Errorf("%v: help went to stderr too: %q", c.args, stderr.String())
		}
		for _, w := range c.want {
			if !strings.Contains(stdout.String(), w) {
				t.Errorf("%v: help does not mention %q:\n%s", c.args, w, stdout.String())
			}
		}
		for line := range strings.Lines(stdout.String()) {
			if len(strings.TrimRight(line, "\n")) > 200 {
				t.Errorf("%v: help line longer than 200 columns: %q", c.args, line)
			}
		}
	}
	// Hidden test flags stay hidden.
	var out bytes.Buffer
	realMain(context.Background(), []string{"run", "--help"}, &out, &out, nil)
	for _, hidden := range []string{"--sysfs", "--cpuprofile"} {
		if strings.Contains(out.String(), hidden) {
			t.Errorf("run --help shows the hidden flag %s", hidden)
		}
	}
}
