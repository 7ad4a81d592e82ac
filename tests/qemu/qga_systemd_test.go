package qemu

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"
)

// qgaDeviceUnit is the device unit Debian's qemu-guest-agent.service is
// bound to (BindsTo=, After=).
const qgaDeviceUnit = `dev-virtio\x2dports-org.qemu.guest_agent.0.device`

// TestQGAUnitStartsOnNode boots the systemd guest with Debian's udev and
// the packaged qemu-guest-agent.service and 60-qemu-guest-agent.rules,
// all unmodified, plus contrib/udev/61-vserial-nodes.rules and
// contrib/systemd/vserial-agent.service running with --nodes: when the
// agent's node appears, udev names its /dev/virtio-ports link, systemd's
// device unit appears and qemu-guest-agent.service starts by itself and
// answers the host; when the port is unplugged the node goes and the unit
// stops (BindsTo=), plugged again it starts again; when the agent stops
// the device unit goes. Then, in the same boot, the kernel's driver takes the
// function and the same unit starts through the distribution's own rule,
// which shows the guest's udev and systemd are the distribution's path.
func TestQGAUnitStartsOnNode(t *testing.T) {
	t.Parallel()
	cache, files := contribSystemdFiles(t)
	rule, err := os.ReadFile(contribFile(t, "udev", "61-vserial-nodes.rules"))
	if err != nil {
		t.Fatal(err)
	}
	udev, err := UdevFiles(cache)
	if err != nil {
		t.Fatal(err)
	}
	q, err := EnsureQGA(cache)
	if err != nil {
		t.Fatal(err)
	}
	qgaUnit, err := QGAUnitFiles(q)
	if err != nil {
		t.Fatal(err)
	}
	files = append(append(files, udev...), qgaUnit...)
	files = append(files,
		File{Dst: "/etc/udev/rules.d/61-vserial-nodes.rules", Data: rule},
		// The operator's drop-in: nodes on, and (no journald here) the
		// log in a file.
		File{Dst: "/etc/systemd/system/vserial-agent.service.d/nodes.conf", Data: []byte("[Service]\nExecStart=\n" +
			"ExecStart=" + SystemdAgentPath + " run --socket-dir /run/vserial --wait-devices --nodes\n" +
			"StandardOutput=append:/agent.log\nStandardError=append:/agent.log\n")},
		// qemu-ga's defaults keep its pid file in /var/run.
		File{Dst: "/var/run", Symlink: "/run"},
	)
	g := Boot(t, Options{
		Ports: []Port{{Name: qgaNodeName, Nr: 1}}, QGA: true, Modules: []string{"cuse"},
		Files: files, Append: SystemdAppend,
	})
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	show := func(t *testing.T, unit string, props ...string) map[string]string {
		t.Helper()
		return systemctlShow(ctx, t, g, unit, props...)
	}
	// waitUnit waits up to limit for qemu-guest-agent.service to be in
	// state (active or inactive) and returns its properties.
	waitUnit := func(t *testing.T, state string, limit time.Duration) map[string]string {
		t.Helper()
		for deadline := time.Now().Add(limit); ; time.Sleep(250 * time.Millisecond) {
			st := show(t, "qemu-guest-agent.service", "ActiveState", "SubState", "MainPID", "NRestarts")
			if st["ActiveState"] == state || time.Now().After(deadline) {
				return st
			}
		}
	}
	// active waits for the unit to run.
	active := func(t *testing.T) map[string]string {
		t.Helper()
		st := waitUnit(t, "active", time.Minute)
		if st["ActiveState"] != "active" {
			t.Fatalf("qemu-guest-agent.service %v, want active", st)
		}
		return st
	}
	defer func() {
		if t.Failed() {
			for _, argv := range [][]string{
				{"cat", "/agent.log"},
				{systemctlPath, "status", "--no-pager", "vserial-agent.service", "qemu-guest-agent.service", "systemd-udevd.service", qgaDeviceUnit},
				{systemctlPath, "list-units", "--no-pager", "--all"},
				{"ls", "/dev", "/dev/virtio-ports"},
				{"dmesg"},
			} {
				out, err := g.Run(context.Background(), argv...)
				t.Logf("%v (%v):\n%s", argv, err, out)
			}
		}
	}()
	parent := t
	c := NewQGAClient(g.DialPort(t, qgaNodeName))
	t.Cleanup(func() { c.Close() })
	id := time.Now().UnixNano() % 1e12
	ping := func(t *testing.T, what string) {
		t.Helper()
		got, err := c.SyncRetry(ctx, 5*time.Second, id)
		if err != nil {
			t.Fatalf("%s: guest-sync-delimited: %v", what, err)
		}
		id = got + 1
		if err := c.Execute(ctx, "guest-ping", nil, nil); err != nil {
			t.Fatalf("%s: guest-ping: %v", what, err)
		}
	}

	t.Run("vserial-node", func(t *testing.T) {
		st := active(t)
		t.Logf("qemu-guest-agent.service on vserial's node: %v", st)
		info := g.MustRun(t, udevadmPath, "info", qgaNodeLink)
		t.Logf("udevadm info %s:\n%s", qgaNodeLink, info)
		for _, want := range []string{"E: SUBSYSTEM=cuse", "E: VSERIAL_PORT_NAME=" + qgaNodeName, "S: virtio-ports/" + qgaNodeName, "E: SYSTEMD_WANTS=qemu-guest-agent.service"} {
			if !strings.Contains(info, want) {
				t.Errorf("udevadm info: no %q", want)
			}
		}
		if d := show(t, qgaDeviceUnit, "ActiveState"); d["ActiveState"] != "active" {
			t.Errorf("%s: %v, want active", qgaDeviceUnit, d)
		}
		ping(t, "qemu-ga started by systemd on vserial's node")
		// The port is unplugged: its node goes, and BindsTo= stops the
		// unit; plugged again, the node comes back and the unit starts.
		if err := g.UnplugPort(ctx, qgaNodeName); err != nil {
			t.Fatal(err)
		}
		if st := waitUnit(t, "inactive", 20*time.Second); st["ActiveState"] != "inactive" {
			t.Fatalf("qemu-guest-agent.service %v 20 s after its port was unplugged, want inactive", st)
		}
		if _, err := g.HotplugPort(ctx, Port{Name: qgaNodeName, Nr: 1}); err != nil {
			t.Fatal(err)
		}
		active(t)
		c.Close()
		c = NewQGAClient(g.DialPort(parent, qgaNodeName)) // used by the kernel-port case too
		ping(t, "qemu-ga restarted by systemd on the node of the port plugged again")
		log, _ := g.Run(ctx, "cat", "/agent.log")
		for line := range strings.Lines(log) {
			if strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR") || strings.Contains(line, "node") {
				t.Logf("agent: %s", strings.TrimSpace(line))
			}
		}
		// The agent stops with qemu-ga running on its node: the node
		// answers as an unplugged port first (ENODEV, POLLHUP) and goes
		// within a second; BindsTo= then stops qemu-ga, which must exit
		// cleanly (before the grace, Debian's qemu-ga 7.2 hung in 2 runs
		// of 4 until systemd's SIGKILL 90 s later).
		if out, err := g.Run(ctx, systemctlPath, "stop", "vserial-agent.service"); err != nil {
			t.Fatalf("systemctl stop vserial-agent: %v %s", err, out)
		}
		if st := waitUnit(t, "inactive", 20*time.Second); st["ActiveState"] != "inactive" {
			t.Fatalf("qemu-guest-agent.service %v 20 s after the agent stopped, want inactive", st)
		}
		if st := show(t, "qemu-guest-agent.service", "ActiveState", "Result"); st["Result"] != "success" {
			t.Errorf("qemu-guest-agent.service after the agent stopped: %v, want inactive, success", st)
		}
		// The node went, and with it the device unit.
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(250 * time.Millisecond) {
			d := show(t, qgaDeviceUnit, "ActiveState")
			if d["ActiveState"] == "inactive" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s %v 20 s after the agent stopped, want inactive", qgaDeviceUnit, d)
			}
		}
	})

	t.Run("kernel-port", func(t *testing.T) {
		// The in-kernel driver takes the (now free) function; the
		// distribution's own rules start the unit.
		if out, err := g.Run(ctx, systemctlPath, "stop", "vserial-agent.service"); err != nil {
			t.Fatalf("systemctl stop vserial-agent: %v %s", err, out)
		}
		g.MustRun(t, "modprobe", "virtio_pci", "virtio_console")
		st := active(t)
		t.Logf("qemu-guest-agent.service on the kernel's port: %v", st)
		ping(t, "qemu-ga started by systemd on the kernel's port")
	})
}
