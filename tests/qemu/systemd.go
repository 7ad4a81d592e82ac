package qemu

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// The systemd guest: Debian's systemd, unmodified, unpacked in the cache
// like qemu-ga (EnsureDebTree), runs as PID 1 of the test initramfs
// (rdinit=), with only the targets it needs and two units: the guest
// helper on the serial console, and vserial-agent from contrib/systemd,
// installed as an operator would (only its ExecStart path differs). It
// proves what the unit promises: Type=notify readiness, restart on
// failure, and a sandbox (ProtectSystem=strict and the rest) that still
// leaves the agent what it needs.

const (
	systemdPackage = "systemd"
	systemdPath    = "/lib/systemd/systemd"
	systemctlPath  = "/bin/systemctl"
	// SystemdAgentPath is where the systemd guest has vserial-agent, as the
	// unit's comment tells an operator to install it.
	SystemdAgentPath = "/usr/local/bin/vserial-agent"
	// SystemdAppend is the kernel command line that makes systemd PID 1
	// and keeps its own messages off the serial console, which the helper
	// speaks on.
	SystemdAppend = "rdinit=" + systemdPath + " systemd.show_status=0 systemd.log_target=kmsg systemd.log_level=notice"
)

// systemdLibDirs adds systemd's private library directory.
var systemdLibDirs = append([]string{"/lib/systemd", "/usr/lib/x86_64-linux-gnu/systemd"}, DefaultLibDirs...)

// systemdTargets are the unit files the boot needs from the package: the
// targets the two units hang on and the slices systemd places them in.
var systemdTargets = []string{
	"sysinit.target", "basic.target", "multi-user.target", "local-fs.target", "local-fs-pre.target",
	"swap.target", "sockets.target", "timers.target", "paths.target", "slices.target",
	"shutdown.target", "umount.target", "final.target",
}

// helperUnit runs the guest helper on the serial console.
const helperUnit = `[Unit]
Description=vserial test harness helper (serial console)
DefaultDependencies=no
After=sysinit.target

[Service]
ExecStart=` + HelperPath + ` serve
StandardInput=tty-force
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0
TTYReset=no
TTYVHangup=no
Environment=PATH=/bbin:/bin:/sbin:/usr/bin:/usr/sbin:/usr/local/bin
`

// SystemdFiles returns the initramfs files of the systemd guest: systemd
// and systemctl with their libraries, the targets, the helper's unit, and
// agentUnit (contrib/systemd/vserial-agent.service) installed and enabled
// with the agent binary at SystemdAgentPath.
func SystemdFiles(cache string, agent File, agentUnit []byte) ([]File, error) {
	t, err := ensureDebTree(cache, "systemd", systemdPackage, systemdPath, systemdLibDirs)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var files []File
	add := func(fs ...File) {
		for _, f := range fs {
			if !seen[f.Dst] {
				seen[f.Dst] = true
				files = append(files, f)
			}
		}
	}
	for _, prog := range []string{systemdPath, systemctlPath} {
		fs, err := ELFClosure(t.Root, prog, systemdLibDirs)
		if err != nil {
			return nil, err
		}
		add(fs...)
	}
	unitDir := "/lib/systemd/system"
	for _, u := range systemdTargets {
		src := filepath.Join(t.Root, unitDir, u)
		if _, err := os.Stat(src); err != nil {
			return nil, fmt.Errorf("systemd guest: %s: %w", u, err)
		}
		add(File{Dst: path.Join(unitDir, u), Src: src, Mode: 0o644})
	}
	unit := strings.ReplaceAll(string(agentUnit), "/usr/local/bin/vserial-agent", SystemdAgentPath)
	agent.Dst = SystemdAgentPath
	etc := "/etc/systemd/system"
	add(
		agent,
		File{Dst: path.Join(etc, "default.target"), Symlink: path.Join(unitDir, "multi-user.target")},
		File{Dst: path.Join(etc, "vsguest.service"), Data: []byte(helperUnit)},
		File{Dst: path.Join(etc, "multi-user.target.wants", "vsguest.service"), Symlink: path.Join(etc, "vsguest.service")},
		File{Dst: path.Join(etc, "vserial-agent.service"), Data: []byte(unit)},
		File{Dst: path.Join(etc, "sysinit.target.wants", "vserial-agent.service"), Symlink: path.Join(etc, "vserial-agent.service")},
		File{Dst: "/etc/os-release", Data: []byte("ID=debian\nNAME=\"vserial test guest\"\n")},
	)
	return files, nil
}
