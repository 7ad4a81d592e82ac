package qemu

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestAgentUnderSystemd boots a guest whose PID 1 is Debian's systemd
// (unmodified, SystemdFiles) with contrib/systemd/vserial-agent.service
// installed and enabled as its comment says, and checks what the unit
// promises: the service is active only once the port's socket exists
// (Type=notify, READY=1 and the STATUS line), data flows both ways under
// its sandbox (ProtectSystem=strict, the capability bounding set,
// RestrictAddressFamilies...: the agent still binds the function through
// /sys, loads uio, reserves hugepages and maps /dev/uioN), a SIGKILL is
// followed by a restart that takes the function again (Restart=on-failure),
// and `systemctl stop` ends it cleanly with the function given back.
func TestAgentUnderSystemd(t *testing.T) {
	t.Parallel()
	_, files := contribSystemdFiles(t)
	// No journald in this guest: the agent's log goes to a file (a
	// drop-in, as an operator might add; systemd opens it before the
	// sandbox is set up).
	files = append(files, File{Dst: "/etc/systemd/system/vserial-agent.service.d/log.conf",
		Data: []byte("[Service]\nStandardOutput=append:/agent.log\nStandardError=append:/agent.log\n")})
	const name = "org.vserial.systemd.0"
	g := Boot(t, Options{Ports: []Port{{Name: name, Nr: 1}}, Files: files, Append: SystemdAppend, ExtraArgs: RootPortArgs(1)})
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	sock := AgentSocket(name)
	show := func(props ...string) map[string]string {
		t.Helper()
		return systemctlShow(ctx, t, g, "vserial-agent.service", props...)
	}
	defer func() {
		if t.Failed() {
			log, _ := g.Run(context.Background(), "cat", "/agent.log")
			st, _ := g.Run(context.Background(), systemctlPath, "status", "--no-pager", "vserial-agent.service")
			t.Logf("agent log:\n%s\nstatus:\n%s", log, st)
		}
	}()

	// Readiness: systemd holds the unit in "activating" until READY=1,
	// which the agent sends once every port present has its socket.
	var st map[string]string
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(200 * time.Millisecond) {
		st = show("ActiveState", "SubState", "StatusText", "MainPID", "NRestarts", "ProtectSystem", "Type")
		if st["ActiveState"] != "activating" || time.Now().After(deadline) {
			break
		}
	}
	t.Logf("unit: %v", st)
	if st["ActiveState"] != "active" || st["SubState"] != "running" || st["Type"] != "notify" || st["ProtectSystem"] != "strict" {
		t.Fatalf("vserial-agent.service %v, want active/running, Type=notify, ProtectSystem=strict", st)
	}
	if !strings.Contains(st["StatusText"], "serving 1 ports") {
		t.Errorf("status text %q, want the agent's STATUS= line", st["StatusText"])
	}
	if err := g.WaitPath(ctx, sock, time.Second); err != nil {
		t.Fatalf("active before the port's socket exists: %v", err)
	}
	conn := g.DialPort(t, name)
	if err := both(ctx, t, g, conn, sock, 256<<10, 8100); err != nil {
		t.Fatal(err)
	}

	// The unit runs --wait-devices: a function hot-plugged now is adopted
	// from the kernel's uevents, which the sandbox must let through.
	hot := Port{Name: "org.vserial.systemd.hot", Nr: 2}
	if _, err := g.HotplugFunction(ctx, "hs1", "rp1", "", hot); err != nil {
		t.Fatal(err)
	}
	if err := g.WaitPath(ctx, AgentSocket(hot.Name), time.Minute); err != nil {
		t.Fatalf("a function hot-plugged under the unit was not adopted: %v", err)
	}
	if err := both(ctx, t, g, g.DialPort(t, hot.Name), AgentSocket(hot.Name), 64<<10, 8102); err != nil {
		t.Fatal(err)
	}

	// Restart on failure: SIGKILL leaves the function bound and the
	// device un-reset; the new agent takes it again.
	pid := st["MainPID"]
	if _, err := g.Run(ctx, "kill", "-9", pid); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(250 * time.Millisecond) {
		st = show("ActiveState", "MainPID", "NRestarts")
		if n, _ := strconv.Atoi(st["NRestarts"]); n >= 1 && st["ActiveState"] == "active" && st["MainPID"] != pid && st["MainPID"] != "0" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no restart after SIGKILL: %v", st)
		}
	}
	t.Logf("after SIGKILL of %s: restarted as %s (NRestarts %s)", pid, st["MainPID"], st["NRestarts"])
	if err := g.WaitPath(ctx, sock, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := both(ctx, t, g, conn, sock, 256<<10, 8101); err != nil {
		t.Fatalf("after the restart: %v", err)
	}

	// A clean stop: exit 0, the socket gone, the function given back to
	// the driver it had when this agent took it — uio_pci_generic, since
	// the killed one never gave it back (nothing survives a SIGKILL to
	// say which driver it had before).
	if out, err := g.Run(ctx, systemctlPath, "stop", "vserial-agent.service"); err != nil {
		t.Fatalf("systemctl stop: %v %s", err, out)
	}
	st = show("ActiveState", "Result", "ExecMainStatus")
	if st["ActiveState"] != "inactive" || st["Result"] != "success" || st["ExecMainStatus"] != "0" {
		t.Errorf("after stop: %v, want inactive, success, status 0", st)
	}
	if err := g.WaitPath(ctx, sock, 500*time.Millisecond); err == nil {
		t.Errorf("socket %s left after stop", sock)
	}
	if drv, _ := g.Run(ctx, "readlink", findVirtioConsole(t, g)+"/driver"); !strings.HasSuffix(strings.TrimSpace(drv), "/uio_pci_generic") {
		t.Errorf("after stop the function is bound to %q, want uio_pci_generic (what the restarted agent found)", drv)
	}
	// The sandbox leaves the loop its real-time bulk calls (CAP_SYS_NICE).
	log, _ := g.Run(ctx, "cat", "/agent.log")
	for line := range strings.Lines(log) {
		if strings.Contains(line, "real-time") {
			t.Errorf("under the unit: %s", strings.TrimSpace(line))
		} else if strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR") {
			t.Logf("agent under the unit: %s", strings.TrimSpace(line))
		}
	}
}

// contribSystemdFiles are the systemd guest's files (SystemdFiles) with
// contrib/systemd/vserial-agent.service installed and enabled, and the
// cache they came from.
func contribSystemdFiles(t *testing.T) (string, []File) {
	t.Helper()
	cache, err := CacheDir()
	if err != nil {
		t.Fatal(err)
	}
	unit, err := os.ReadFile(contribFile(t, "systemd", "vserial-agent.service"))
	if err != nil {
		t.Fatal(err)
	}
	files, err := SystemdFiles(cache, BuildAgent(t), unit)
	if err != nil {
		t.Fatal(err)
	}
	return cache, files
}

// contribFile is the host path of a file under contrib/.
func contribFile(t *testing.T, elem ...string) string {
	t.Helper()
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(append([]string{root, "contrib"}, elem...)...)
}

// systemctlShow returns the properties of unit in the systemd guest.
func systemctlShow(ctx context.Context, t *testing.T, g *Guest, unit string, props ...string) map[string]string {
	t.Helper()
	args := []string{systemctlPath, "show", unit}
	for _, p := range props {
		args = append(args, "-p", p)
	}
	out, err := g.Run(ctx, args...)
	if err != nil {
		t.Fatalf("systemctl show %s: %v %s", unit, err, out)
	}
	m := map[string]string{}
	for line := range strings.Lines(out) {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), "="); ok {
			m[k] = v
		}
	}
	return m
}
