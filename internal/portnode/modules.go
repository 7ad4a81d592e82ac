package portnode

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/u-root/u-root/pkg/kmodule"
	"golang.org/x/sys/unix"
)

// cuseLoad is taken while EnsureCUSE loads the module.
var cuseLoad sync.Mutex

// probeModule loads a kernel module with its dependencies (tests replace
// it).
var probeModule = kmodule.Probe

// EnsureCUSE makes sure the CUSE channel at path is there: it loads the
// cuse module (and fuse, its dependency) from /lib/modules/$(uname -r)
// when the channel is missing, and makes the channel's node from sysfs
// when /dev is not devtmpfs.
func EnsureCUSE(path, sys string, log *slog.Logger) error {
	if isCharDev(path) {
		return nil
	}
	cuseLoad.Lock()
	defer cuseLoad.Unlock()
	if isCharDev(path) {
		return nil
	}
	sysdev := filepath.Join(sys, "class", "misc", "cuse", "dev")
	if _, err := os.Stat(sysdev); err != nil {
		if err := probeModule("cuse", ""); err != nil {
			var u unix.Utsname
			_ = unix.Uname(&u)
			rel := unix.ByteSliceToString(u.Release[:])
			return fmt.Errorf("%s is missing and kernel module cuse could not be loaded from %s: %w (build the kernel with CONFIG_CUSE, or install the module)",
				path, filepath.Join("/lib/modules", rel), err)
		}
		log.Info("kernel module loaded", "module", "cuse")
	}
	for range 100 {
		if isCharDev(path) {
			return nil
		}
		if err := mknodFromSysfs(sysdev, path); err == nil {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("%s: no CUSE channel appeared (is the kernel built with CONFIG_CUSE?)", path)
}

func isCharDev(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// mknodFromSysfs makes a character node at path (mode 0600) with the
// device number in sysdev ("MAJOR:MINOR").
func mknodFromSysfs(sysdev, path string) error {
	b, err := os.ReadFile(sysdev)
	if err != nil {
		return err
	}
	ma, mi, ok := strings.Cut(strings.TrimSpace(string(b)), ":")
	if !ok {
		return fmt.Errorf("%s: %q is not MAJOR:MINOR", sysdev, b)
	}
	major, err1 := strconv.ParseUint(ma, 10, 32)
	minor, err2 := strconv.ParseUint(mi, 10, 32)
	if err1 != nil || err2 != nil {
		return fmt.Errorf("%s: %q is not MAJOR:MINOR", sysdev, b)
	}
	err = unix.Mknod(path, unix.S_IFCHR|0o600, int(unix.Mkdev(uint32(major), uint32(minor))))
	if err != nil && err != unix.EEXIST {
		return err
	}
	return nil
}
