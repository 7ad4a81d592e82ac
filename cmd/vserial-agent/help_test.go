package main

import (
	"bytes"
	"context"
	"runtime/debug"
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
		{[]string{"--help"}, []string{"userspace virtio-console", "Usage:", "Examples:", "Exit codes:", "/run/vserial/NAME", "vport<D>p<N>", ".control", "vserial-agent run", "vserial-agent list", "vserial-agent events", "vserial-agent version", "Type=notify", "README", "vfio-pci", "--bind vfio"}},
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

func TestVersionText(t *testing.T) {
	stamped := &debug.BuildInfo{
		GoVersion: "go1.26.0",
		Main:      debug.Module{Path: "github.com/vserial/vserial", Version: "v0.3.0"},
		Settings: []debug.BuildSetting{
			{Key: "vcs", Value: "git"},
			{Key: "vcs.revision", Value: "0123456789abcdef0123456789abcdef01234567"},
			{Key: "vcs.time", Value: "2026-12-03T12:00:00Z"},
			{Key: "vcs.modified", Value: "true"},
		},
	}
	clean := *stamped
	clean.Settings = []debug.BuildSetting{{Key: "vcs.revision", Value: "0123456789abcdef0123456789abcdef01234567"}, {Key: "vcs.modified", Value: "false"}}
	novcs := &debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Path: "github.com/vserial/vserial", Version: "(devel)"}}
	for _, c := range []struct {
		name    string
		bi      *debug.BuildInfo
		ok      bool
		want    []string
		notWant []string
	}{
		{"stamped", stamped, true, []string{"vserial-agent v0.3.0\n", "module:   github.com/vserial/vserial\n",
			"revision: 0123456789abcdef0123456789abcdef01234567 (modified)\n", "time:     2026-12-03T12:00:00Z\n", "go:       go1.26.0\n"}, nil},
		{"clean tree", &clean, true, []string{"revision: 0123456789abcdef0123456789abcdef01234567\n"}, []string{"modified", "time:"}},
		{"no vcs", novcs, true, []string{"vserial-agent (devel)\n", "revision: unknown (built without VCS information"}, nil},
		{"no build info", nil, false, []string{"no build information"}, []string{"revision"}},
	} {
		got := versionText(c.bi, c.ok)
		for _, w := range c.want {
			if !strings.Contains(got, w) {
				t.Errorf("%s: %q lacks %q", c.name, got, w)
			}
		}
		for _, w := range c.notWant {
			if strings.Contains(got, w) {
				t.Errorf("%s: %q has %q", c.name, got, w)
			}
		}
	}
}

func TestVersionCommand(t *testing.T) {
	for _, args := range [][]string{{"--version"}, {"version"}} {
		var stdout, stderr bytes.Buffer
		if code := realMain(context.Background(), args, &stdout, &stderr, nil); code != exitOK || stderr.Len() != 0 {
			t.Errorf("%v: exit %d, stderr %q", args, code, stderr.String())
		}
		if !strings.HasPrefix(stdout.String(), "vserial-agent ") || !strings.Contains(stdout.String(), "go:       go1.") {
			t.Errorf("%v: %q", args, stdout.String())
		}
	}
	var stdout, stderr bytes.Buffer
	if code := realMain(context.Background(), []string{"version", "--json"}, &stdout, &stderr, nil); code != exitUsage || stdout.Len() != 0 {
		t.Errorf("version with an argument: exit %d, stdout %q", code, stdout.String())
	}
}
