package main

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestUdevEnvNamesTheNode: the line names the port whose link points at
// the node, relative or absolute, waiting for a link made late; a node no
// link names fails after --wait, and a bad node name is a usage error.
func TestUdevEnvNamesTheNode(t *testing.T) {
	dev := t.TempDir()
	links := filepath.Join(dev, "virtio-ports")
	if err := os.MkdirAll(links, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, target := range map[string]string{
		"org.qemu.guest_agent.0": "../vport100p1",
		"org.example.abs":        filepath.Join(dev, "vport100p2"),
		"org.example.other":      "../vport0p1",
	} {
		if err := os.Symlink(target, filepath.Join(links, name)); err != nil {
			t.Fatal(err)
		}
	}
	run := func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		code := udevEnv(append([]string{"--dev", dev}, args...), &out, &errb)
		return code, out.String(), errb.String()
	}
	for node, want := range map[string]string{
		"vport100p1": "VSERIAL_PORT_NAME=org.qemu.guest_agent.0\n",
		"vport100p2": "VSERIAL_PORT_NAME=org.example.abs\n",
	} {
		if code, out, errs := run(node); code != exitOK || out != want {
			t.Errorf("udev-env %s: exit %d, %q (%s), want %q", node, code, out, errs, want)
		}
	}
	go func() {
		time.Sleep(100 * time.Millisecond)
		_ = os.Symlink("../vport100p3", filepath.Join(links, "org.example.late"))
	}()
	if code, out, _ := run("--wait", "5s", "vport100p3"); code != exitOK || out != "VSERIAL_PORT_NAME=org.example.late\n" {
		t.Errorf("a link made late: exit %d, %q", code, out)
	}
	if code, out, errs := run("--wait", "50ms", "vport100p9"); code != exitFailure || out != "" || errs == "" {
		t.Errorf("a node without a link: exit %d, %q, %q; want exit 1, nothing on stdout, a reason", code, out, errs)
	}
	for _, bad := range [][]string{{}, {"../etc"}, {"vport1p1", "vport1p2"}, {"--nope", "vport1p1"}} {
		if code, _, _ := run(bad...); code != exitUsage {
			t.Errorf("udev-env %q: exit %d, want %d", bad, code, exitUsage)
		}
	}
}
