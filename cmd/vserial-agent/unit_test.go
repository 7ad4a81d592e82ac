package main

import (
	"io"
	"os"
	"strings"
	"testing"
)

// TestSystemdUnit checks contrib/systemd/vserial-agent.service against the
// command: its ExecStart parses as a valid run command line, and it keeps
// the settings the agent relies on (readiness protocol, restart, the
// access it needs to /sys and /dev).
func TestSystemdUnit(t *testing.T) {
	b, err := os.ReadFile("../../contrib/systemd/vserial-agent.service")
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string][]string{}
	section := ""
	for line := range strings.Lines(string(b)) {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "["):
			section = strings.Trim(line, "[]")
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				t.Fatalf("unit line %q is not KEY=VALUE", line)
			}
			keys[section+"."+k] = append(keys[section+"."+k], v)
		}
	}
	for k, want := range map[string]string{
		"Service.Type":            "notify",
		"Service.Restart":         "on-failure",
		"Service.KillSignal":      "SIGTERM",
		"Service.ProtectSystem":   "strict",
		"Service.NoNewPrivileges": "yes",
	} {
		if got := keys[k]; len(got) != 1 || got[0] != want {
			t.Errorf("%s = %v, want %s", k, got, want)
		}
	}
	// Settings that would break the agent: a read-only /sys, no /dev/uioN,
	// no module loading.
	for _, k := range []string{"Service.ProtectKernelTunables", "Service.PrivateDevices", "Service.ProtectKernelModules", "Service.DevicePolicy"} {
		if v, ok := keys[k]; ok {
			t.Errorf("%s=%v is set: the agent needs what it takes away", k, v)
		}
	}
	caps := strings.Fields(strings.Join(keys["Service.CapabilityBoundingSet"], " "))
	for _, c := range []string{"CAP_SYS_ADMIN", "CAP_SYS_MODULE", "CAP_IPC_LOCK"} {
		if !strings.Contains(strings.Join(caps, " "), c) {
			t.Errorf("CapabilityBoundingSet %v lacks %s", caps, c)
		}
	}
	exec := keys["Service.ExecStart"]
	if len(exec) != 1 {
		t.Fatalf("ExecStart = %v, want one", exec)
	}
	argv := strings.Fields(exec[0])
	if len(argv) < 2 || !strings.HasSuffix(argv[0], "/vserial-agent") || argv[1] != "run" {
		t.Fatalf("ExecStart %q does not run vserial-agent run", exec[0])
	}
	cfg, err := parseRun(argv[2:], io.Discard)
	if err != nil {
		t.Fatalf("ExecStart %q: %v", exec[0], err)
	}
	if rd := keys["Service.RuntimeDirectory"]; len(rd) != 1 || "/run/"+rd[0] != cfg.Agent.SocketDir {
		t.Errorf("RuntimeDirectory %v does not match the socket dir %s", rd, cfg.Agent.SocketDir)
	}
}
