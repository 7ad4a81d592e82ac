package qemu

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// urootCommands are the u-root commands in the base image: init, and a few
// tools that help when someone boots the image by hand. Everything the tests
// need is built into the guest helper. Each needs a `tool` line in go.mod
// (go get -tool PKG@v0.16.0), which keeps its dependencies in go.sum.
var urootCommands = []string{
	"init", "ls", "cat", "dmesg", "mount", "ps", "insmod", "lsmod", "rmmod",
	"mkdir", "mknod", "uname", "sleep", "echo", "kill", "grep", "pci",
}

const (
	urootModule = "github.com/u-root/u-root"
	// HelperPath is where the guest helper lives in the guest; u-root's
	// init starts it as /bin/uinit.
	HelperPath = "/bin/vsguest"
	// AgentPath is where BuildAgent's binary lives in the guest.
	AgentPath = "/bin/vserial-agent"
)

// EnsureBaseImage returns the cached u-root base initramfs, building it on
// a cache miss. The key covers the u-root version and the command list.
func EnsureBaseImage(cache string) (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	out, err := run(root, "go", "list", "-m", "-f", "{{.Version}}", urootModule)
	if err != nil {
		return "", err
	}
	version := strings.TrimSpace(string(out))
	key := sha256.Sum256([]byte(version + "\n" + strings.Join(urootCommands, " ") + "\n" + HelperPath))
	dir := filepath.Join(cache, "uroot")
	img := filepath.Join(dir, fmt.Sprintf("base-%s-%s.cpio", version, hex.EncodeToString(key[:6])))
	if _, err := os.Stat(img); err == nil {
		return img, nil
	}
	unlock, err := lockCache(dir, "base")
	if err != nil {
		return "", err
	}
	defer unlock()
	if _, err := os.Stat(img); err == nil {
		return img, nil
	}
	tmp := img + ".tmp"
	args := []string{"tool", "u-root", "-o", tmp, "-defaultsh=", "-uinitcmd=" + HelperPath}
	for _, c := range urootCommands {
		args = append(args, urootModule+"/cmds/core/"+c)
	}
	if _, err := run(root, "go", args...); err != nil {
		return "", fmt.Errorf("building the u-root base image: %w", err)
	}
	return img, os.Rename(tmp, img)
}

var (
	buildMu    sync.Mutex
	buildCache = map[string]string{}
	buildDir   string
)

// BuildGoBinary builds a static (CGO_ENABLED=0) binary of a package of our
// module, once per test process, and returns its host path. pkg is relative
// to the module root, e.g. "./cmd/vserial-agent".
func BuildGoBinary(t testing.TB, pkg string, tags ...string) string {
	t.Helper()
	p, err := buildGoBinary(pkg, tags...)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func buildGoBinary(pkg string, tags ...string) (string, error) {
	buildMu.Lock()
	defer buildMu.Unlock()
	key := pkg + " " + strings.Join(tags, ",")
	if p, ok := buildCache[key]; ok {
		return p, nil
	}
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	if buildDir == "" {
		// Lives as long as the test process; tiny, in the system temp dir.
		if buildDir, err = os.MkdirTemp("", "vserial-bin-"); err != nil {
			return "", err
		}
	}
	name := filepath.Base(pkg)
	if len(tags) > 0 {
		name += "-" + strings.Join(tags, "-")
	}
	out := filepath.Join(buildDir, name)
	cmd := []string{"build", "-trimpath", "-o", out}
	if len(tags) > 0 {
		cmd = append(cmd, "-tags", strings.Join(tags, ","))
	}
	cmd = append(cmd, pkg)
	// Static: the guest has no libc.
	if _, err := runEnv(root, []string{"CGO_ENABLED=0"}, "go", cmd...); err != nil {
		return "", err
	}
	buildCache[key] = out
	return out, nil
}

// BuildAgent builds cmd/vserial-agent and returns it as a File for
// Options.Files, installed at AgentPath in the guest.
func BuildAgent(t testing.TB) File {
	t.Helper()
	return File{Dst: AgentPath, Src: BuildGoBinary(t, "./cmd/vserial-agent"), Mode: 0o755}
}

// BuildFaultAgent is BuildAgent built with -tags faultinject: the agent
// then commits a driver fault on SIGUSR1 as the file FaultFile says
// (cmd/vserial-agent/inject_on.go), for recovery tests. Production builds
// have no such trigger.
func BuildFaultAgent(t testing.TB) File {
	t.Helper()
	return File{Dst: AgentPath, Src: BuildGoBinary(t, "./cmd/vserial-agent", "faultinject"), Mode: 0o755}
}

// FaultFile is where a faultinject agent reads its fault request.
const FaultFile = "/tmp/vserial-fault"

// writeInitramfs writes base followed by an archive of files to dst.
func writeInitramfs(dst, base string, files []File) error {
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	defer out.Close()
	in, err := os.Open(base)
	if err != nil {
		return err
	}
	defer in.Close()
	bw := bufio.NewWriterSize(out, 1<<20)
	n, err := io.Copy(bw, in)
	if err != nil {
		return err
	}
	// The unpacker wants each header 4-byte aligned and skips zeros
	// between archives.
	if _, err := bw.Write(make([]byte, (4-n%4)%4)); err != nil {
		return err
	}
	if err := writeArchive(bw, files); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	return out.Close()
}
