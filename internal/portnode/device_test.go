package portnode

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vserial/vserial/cuse"
)

// The node index skips indexes a kernel-driven port or this process uses.
func TestPickIndex(t *testing.T) {
	dev, sys := t.TempDir(), t.TempDir()
	os.WriteFile(filepath.Join(dev, "vport100p1"), nil, 0o600)
	os.MkdirAll(filepath.Join(sys, "class", "virtio-ports", "vport101p2"), 0o755)
	a := NewDevice(Config{Dev: dev, Sys: sys, Index: 0})
	defer a.Close()
	b := NewDevice(Config{Dev: dev, Sys: sys, Index: 0})
	defer b.Close()
	c := NewDevice(Config{Dev: dev, Sys: sys, Index: 5})
	if a.NodeIndex() != 102 || b.NodeIndex() != 103 || c.NodeIndex() != 105 {
		t.Fatalf("node indexes %d %d %d, want 102 103 105", a.NodeIndex(), b.NodeIndex(), c.NodeIndex())
	}
	c.Close()
	if d := NewDevice(Config{Dev: dev, Sys: sys, Index: 5}); d.NodeIndex() != 105 {
		t.Fatalf("index of a closed device not taken again: %d", d.NodeIndex())
	} else {
		d.Close()
	}
	if got := a.NodeName(7); got != "vport102p7" {
		t.Fatalf("NodeName = %q", got)
	}
}

// Without a CUSE channel the port gets no node: the failure is logged and
// reported once per reason, and the port stays usable by its socket.
func TestNoCUSE(t *testing.T) {
	r := newRig(t)
	dev, sys := t.TempDir(), t.TempDir()
	probed := 0
	old := probeModule
	probeModule = func(name, params string) error {
		probed++
		return errors.New("module cuse not found")
	}
	defer func() { probeModule = old }()
	var mu sync.Mutex
	var reasons []string
	d := NewDevice(Config{Dev: dev, Sys: sys, Want: func(string) bool { return true },
		Failed: func(id uint32, reason string) {
			mu.Lock()
			reasons = append(reasons, reason)
			mu.Unlock()
		}})
	pt := d.Add(r.d.Port(1), r.l)
	deadline := time.Now().Add(patience)
	for {
		mu.Lock()
		n := len(reasons)
		mu.Unlock()
		if n > 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if err := pt.SetGuestOpen(r.ctx, true); err != nil {
		t.Fatalf("socket open without a node: %v", err)
	}
	pt.SetGuestOpen(r.ctx, false)
	r.m.HostConnect(1, false) // a change: the node is tried again
	time.Sleep(50 * time.Millisecond)
	d.Close()
	mu.Lock()
	defer mu.Unlock()
	if len(reasons) != 1 || !strings.Contains(reasons[0], "module cuse not found") {
		t.Fatalf("failures reported: %q, want one naming the module", reasons)
	}
	if probed < 1 {
		t.Fatal("the module was never asked for")
	}
	if ents, _ := os.ReadDir(dev); len(ents) != 0 {
		t.Fatalf("%s holds %d entries without CUSE", dev, len(ents))
	}
}

// The symlink follows the port's name and is removed with it; a file the
// agent did not make is left alone.
func TestSymlink(t *testing.T) {
	r := newRig(t)
	dev := t.TempDir()
	d := NewDevice(Config{Dev: dev, Sys: t.TempDir()})
	defer d.Close()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[1])
	pt := NewPort(r.d.Port(1), r.l, nil)
	srv, err := cuse.NewServer(os.NewFile(uintptr(fds[0]), "fake-cuse"), cuse.Config{Name: "t"}, pt)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	n := &nodeState{d: d, pt: pt, srv: srv} // a node: links are made
	dir := filepath.Join(dev, "virtio-ports")
	target := "../" + d.NodeName(1)
	n.setLink("org.one")
	if got, err := os.Readlink(filepath.Join(dir, "org.one")); err != nil || got != target {
		t.Fatalf("link org.one → %q (%v), want %s", got, err, target)
	}
	n.setLink("org.two")
	if _, err := os.Lstat(filepath.Join(dir, "org.one")); !os.IsNotExist(err) {
		t.Fatalf("old link still there after the rename (%v)", err)
	}
	if got, _ := os.Readlink(filepath.Join(dir, "org.two")); got != target {
		t.Fatalf("link org.two → %q", got)
	}
	os.WriteFile(filepath.Join(dir, "taken"), []byte("mine"), 0o644)
	n.setLink("taken")
	if b, _ := os.ReadFile(filepath.Join(dir, "taken")); string(b) != "mine" {
		t.Fatalf("a file the agent did not make was replaced: %q", b)
	}
	n.setLink("../escape")
	n.setLink("")
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 || ents[0].Name() != "taken" {
		t.Fatalf("%s holds %v, want only the foreign file", dir, ents)
	}
}
