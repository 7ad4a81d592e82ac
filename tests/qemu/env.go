package qemu

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// Environment variables that configure the guest tests (see docs/testing.md).
const (
	EnvCache    = "VSERIAL_CACHE"
	EnvRequired = "VSERIAL_QEMU_REQUIRED"
	EnvKeep     = "VSERIAL_KEEP"
)

// hostTool is a program the harness runs on the host, and the Debian
// package that provides it.
type hostTool struct{ cmd, pkg string }

var hostTools = []hostTool{
	{"qemu-system-x86_64", "qemu-system-x86"},
	{"depmod", "kmod"},
	{"modprobe", "kmod"},
	{"xz", "xz-utils"},
	{"zstd", "zstd"},
	{"apt-get", "apt"},
	{"apt-cache", "apt"},
	{"dpkg", "dpkg"},
}

func envSet(name string) bool {
	v := os.Getenv(name)
	return v != "" && v != "0" && v != "false"
}

// CacheDir is where kernels, extracted modules and initramfs images are
// kept between runs: $VSERIAL_CACHE, else the user cache dir + "/vserial".
func CacheDir() (string, error) {
	if d := os.Getenv(EnvCache); d != "" {
		return filepath.Abs(d)
	}
	d, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("cache dir: %w (set %s)", err, EnvCache)
	}
	return filepath.Join(d, "vserial"), nil
}

// missingTools lists the host tools that look(cmd) cannot find.
func missingTools(look func(string) (string, error)) []hostTool {
	var miss []hostTool
	for _, t := range hostTools {
		if _, err := look(t.cmd); err != nil {
			miss = append(miss, t)
		}
	}
	return miss
}

// unmet decides what to do about missing requirements: nothing (""), or
// the message to skip with (fail=false) or fail with (fail=true, when the
// caller said the guest tests must run).
func unmet(missing []hostTool, required bool) (msg string, fail bool) {
	if len(missing) == 0 {
		return "", false
	}
	var cmds, pkgs []string
	for _, t := range missing {
		cmds = append(cmds, t.cmd)
		if !strings.Contains(strings.Join(pkgs, " "), t.pkg) {
			pkgs = append(pkgs, t.pkg)
		}
	}
	msg = fmt.Sprintf("guest tests need %s: run scripts/deps (or apt-get install --no-install-recommends %s)",
		strings.Join(cmds, ", "), strings.Join(pkgs, " "))
	if required {
		return msg + "; " + EnvRequired + " is set, so this is a failure", true
	}
	return msg, false
}

var (
	depsOnce sync.Once
	depsErr  error
)

// requireHost makes sure the host can run guests. Missing tools are
// installed with scripts/deps when that can happen without a password
// prompt (root, or CI with VSERIAL_QEMU_REQUIRED set); otherwise the test is
// skipped with a hint, or fails when VSERIAL_QEMU_REQUIRED is set.
func requireHost(t testing.TB) {
	t.Helper()
	required := envSet(EnvRequired)
	depsOnce.Do(func() {
		if len(missingTools(exec.LookPath)) == 0 {
			return
		}
		if os.Geteuid() != 0 && !required {
			return
		}
		root, err := moduleRoot()
		if err != nil {
			depsErr = err
			return
		}
		cmd := exec.Command(filepath.Join(root, "scripts", "deps"))
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			depsErr = fmt.Errorf("scripts/deps: %w\n%s", err, out)
		}
	})
	msg, fail := unmet(missingTools(exec.LookPath), required)
	if msg == "" {
		return
	}
	if depsErr != nil {
		msg += "\n" + depsErr.Error()
	}
	if fail {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// moduleRoot is the directory of our go.mod.
func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("go env GOMOD: not inside the vserial module")
	}
	return filepath.Dir(gomod), nil
}

// lockCache takes an exclusive lock on name in the cache directory, so
// parallel test processes (several packages, several developers) do not
// build the same artifact at once. The returned func releases it.
func lockCache(dir, name string) (func(), error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(dir, name+".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", f.Name(), err)
	}
	return func() { f.Close() }, nil
}

// run runs a host command and returns its stdout; the error carries stderr.
func run(dir string, name string, args ...string) ([]byte, error) {
	return runEnv(dir, nil, name, args...)
}

// runEnv is run with extra environment variables.
func runEnv(dir string, env []string, name string, args ...string) ([]byte, error) {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return out, nil
}
