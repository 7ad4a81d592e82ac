package qemu

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
)

// udev in the systemd guest: Debian's udev package, unmodified, unpacked
// in the cache like systemd (EnsureDebTree): systemd-udevd with its
// sockets and the trigger service, enabled as the package enables them,
// and only the rules a test names (udevRules, and the test's own), so
// nothing else happens on a uevent (no 80-drivers.rules: no module is
// loaded behind the test's back).

const (
	udevPackage = "udev"
	udevadmPath = "/bin/udevadm"
	// UdevRulesDir is where the distribution's rules live in the guest.
	UdevRulesDir = "/lib/udev/rules.d"
)

// udevRules are the rules the guest carries from the udev and systemd
// packages: the /dev/virtio-ports/NAME link of the kernel's ports
// (50-udev-default.rules) and systemd's tagging (99-systemd.rules).
var udevRules = map[string]string{
	"50-udev-default.rules": "udev",
	"99-systemd.rules":      "systemd",
}

// udevUnits are udev's units, and the target each is wanted by.
var udevUnits = map[string]string{
	"systemd-udevd.service":        "sysinit.target",
	"systemd-udev-trigger.service": "sysinit.target",
	"systemd-udevd-control.socket": "sockets.target",
	"systemd-udevd-kernel.socket":  "sockets.target",
}

// UdevFiles returns the initramfs files that run Debian's udev under the
// systemd guest's PID 1 (add them to SystemdFiles'): udevadm (which is
// systemd-udevd) with its libraries, its units enabled, and udevRules.
func UdevFiles(cache string) ([]File, error) {
	u, err := ensureDebTree(cache, "udev", udevPackage, udevadmPath, systemdLibDirs)
	if err != nil {
		return nil, err
	}
	s, err := ensureDebTree(cache, "systemd", systemdPackage, systemdPath, systemdLibDirs)
	if err != nil {
		return nil, err
	}
	files, err := ELFClosure(u.Root, udevadmPath, systemdLibDirs)
	if err != nil {
		return nil, err
	}
	files = append(files, File{Dst: "/lib/systemd/systemd-udevd", Symlink: udevadmPath})
	unitDir := "/lib/systemd/system"
	for unit, target := range udevUnits {
		src := filepath.Join(u.Root, unitDir, unit)
		if _, err := os.Stat(src); err != nil {
			return nil, fmt.Errorf("udev guest: %s: %w", unit, err)
		}
		files = append(files,
			File{Dst: path.Join(unitDir, unit), Src: src, Mode: 0o644},
			File{Dst: path.Join("/etc/systemd/system", target+".wants", unit), Symlink: path.Join(unitDir, unit)})
	}
	for rule, pkg := range udevRules {
		root := u.Root
		if pkg == "systemd" {
			root = s.Root
		}
		src := filepath.Join(root, UdevRulesDir, rule)
		if _, err := os.Stat(src); err != nil {
			return nil, fmt.Errorf("udev guest: %s: %w", rule, err)
		}
		files = append(files, File{Dst: path.Join(UdevRulesDir, rule), Src: src, Mode: 0o644})
	}
	return files, nil
}

// QGAUnitFiles are qemu-guest-agent's systemd unit and udev rule from the
// package, unmodified (boot with Options.QGA for the program): the unit
// is bound to the device unit of /dev/virtio-ports/org.qemu.guest_agent.0,
// and the rule starts it when that port appears.
func QGAUnitFiles(q *QGA) ([]File, error) {
	var files []File
	for _, f := range []string{"/lib/systemd/system/qemu-guest-agent.service", UdevRulesDir + "/60-qemu-guest-agent.rules"} {
		src := filepath.Join(q.Root, f)
		if _, err := os.Stat(src); err != nil {
			return nil, fmt.Errorf("qemu-guest-agent: %w", err)
		}
		files = append(files, File{Dst: f, Src: src, Mode: 0o644})
	}
	return files, nil
}
