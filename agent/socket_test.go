package agent_test

import (
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vserial/vserial/agent"
	"github.com/vserial/vserial/agent/agenttest"
)

func TestSocketNamedAndUnnamed(t *testing.T) {
	a := newAgent(t, agent.Config{})
	addPort(t, a, 0, agenttest.NewPort(1, "org.example.one"))
	addPort(t, a, 2, agenttest.NewPort(3, ""))

	named := filepath.Join(a.Dir(), "org.example.one")
	unnamed := filepath.Join(a.Dir(), "vport2p3")
	for _, path := range []string{named, unnamed} {
		fi, err := os.Lstat(path)
		if err != nil {
			t.Fatalf("socket missing: %v", err)
		}
		if fi.Mode().Type() != fs.ModeSocket {
			t.Errorf("%s: type %v, want socket", path, fi.Mode().Type())
		}
	}
	st := a.Status()
	if len(st) != 2 || st[0].Socket != named || st[1].Socket != unnamed || st[0].Name != "org.example.one" || st[1].Name != "" {
		t.Errorf("status = %+v", st)
	}
	// No temporary names are left behind.
	ents, _ := os.ReadDir(a.Dir())
	if len(ents) != 2 {
		t.Errorf("socket dir holds %d entries, want 2: %v", len(ents), ents)
	}
}

func TestLateNameMovesSocket(t *testing.T) {
	a := newAgent(t, agent.Config{})
	p := agenttest.NewPort(1, "")
	addPort(t, a, 0, p)
	vport := filepath.Join(a.Dir(), "vport0p1")
	if !exists(vport) {
		t.Fatalf("%s missing", vport)
	}
	p.SetName("late")
	late := filepath.Join(a.Dir(), "late")
	waitStatus(t, a, "socket moved to the late name", func(s []agent.PortStatus) bool {
		return len(s) == 1 && s[0].Socket == late
	})
	if exists(vport) {
		t.Errorf("%s still exists after the rename", vport)
	}
	// The new socket works.
	connectClient(t, p, late)
}

func TestDuplicateNameKeepsFallback(t *testing.T) {
	a := newAgent(t, agent.Config{})
	first := agenttest.NewPort(1, "dup")
	second := agenttest.NewPort(2, "dup")
	addPort(t, a, 0, first)
	addPort(t, a, 0, second)
	st := a.Status()
	if st[0].Socket != filepath.Join(a.Dir(), "dup") || st[1].Socket != filepath.Join(a.Dir(), "vport0p2") {
		t.Fatalf("status = %+v, want the first port on dup and the second on vport0p2", st)
	}
	// When the first goes away, the second gets the name.
	first.Remove()
	waitStatus(t, a, "second port to take the freed name", func(s []agent.PortStatus) bool {
		return len(s) == 1 && s[0].ID == 2 && s[0].Socket == filepath.Join(a.Dir(), "dup")
	})
}

func TestBadNamesKeepFallback(t *testing.T) {
	a := newAgent(t, agent.Config{})
	tooLong := strings.Repeat("x", 108-len(a.Dir())-1)
	fits := strings.Repeat("y", 107-len(a.Dir())-1)
	cases := []struct {
		name string
		ok   bool
	}{
		{"a/b", false},
		{".", false},
		{"..", false},
		{tooLong, false},
		{".control", false},
		{"vport7p9", false},
		{"bad\nname", false},
		{fits, true},
		{"org.qemu.guest_agent.0", true},
		{"..hidden", true},
	}
	for i, c := range cases {
		id := uint32(i + 1)
		addPort(t, a, 0, agenttest.NewPort(id, c.name))
		s, _ := status(a, 0, id)
		want := filepath.Join(a.Dir(), "vport0p"+strconv.FormatUint(uint64(id), 10))
		if c.ok {
			want = filepath.Join(a.Dir(), c.name)
		}
		if s.Socket != want {
			t.Errorf("name %q: socket %q, want %q", c.name, s.Socket, want)
		}
		if !exists(want) {
			t.Errorf("name %q: %s missing", c.name, want)
		}
	}
}

func TestPermissions(t *testing.T) {
	// A restrictive umask proves the agent sets the modes itself.
	old := syscall.Umask(0o077)
	t.Cleanup(func() { syscall.Umask(old) })
	for _, c := range []struct {
		name            string
		sock, dir       fs.FileMode
		wantSock, wantD fs.FileMode
	}{
		{"defaults", 0, 0, 0o660, 0o755},
		{"configured", 0o606, 0o711, 0o606, 0o711},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := filepath.Join(shortTempDir(t), "run")
			a := newAgent(t, agent.Config{SocketDir: dir, SocketMode: c.sock, DirMode: c.dir})
			addPort(t, a, 0, agenttest.NewPort(1, "p"))
			fi, err := os.Stat(dir)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != c.wantD {
				t.Errorf("dir mode %#o, want %#o", fi.Mode().Perm(), c.wantD)
			}
			fi, err = os.Lstat(filepath.Join(dir, "p"))
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != c.wantSock {
				t.Errorf("socket mode %#o, want %#o", fi.Mode().Perm(), c.wantSock)
			}
		})
	}
}

func TestExistingDirKeepsMode(t *testing.T) {
	dir := shortTempDir(t)
	if err := os.Chmod(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	newAgent(t, agent.Config{SocketDir: dir, DirMode: 0o755})
	fi, _ := os.Stat(dir)
	if fi.Mode().Perm() != 0o750 {
		t.Errorf("existing dir mode changed to %#o", fi.Mode().Perm())
	}
}

func TestBadModesRefused(t *testing.T) {
	_, err := agent.New(agent.Config{SocketDir: shortTempDir(t), SocketMode: fs.ModeSetuid | 0o660})
	if err == nil {
		t.Fatal("New accepted a setuid socket mode")
	}
}

func TestSymlinkDirRefused(t *testing.T) {
	base := shortTempDir(t)
	real := filepath.Join(base, "real")
	link := filepath.Join(base, "link")
	if err := os.Mkdir(real, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	_, err := agent.New(agent.Config{SocketDir: link, Logger: testLogger(t)})
	if !errors.Is(err, agent.ErrUnsafeDir) || !strings.Contains(err.Error(), "symbolic link") {
		t.Fatalf("New on a symlink: %v, want ErrUnsafeDir naming the symlink", err)
	}
}

func TestNotADirRefused(t *testing.T) {
	f := filepath.Join(shortTempDir(t), "file")
	if err := os.WriteFile(f, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := agent.New(agent.Config{SocketDir: f, Logger: testLogger(t)})
	if !errors.Is(err, agent.ErrUnsafeDir) {
		t.Fatalf("New on a regular file: %v, want ErrUnsafeDir", err)
	}
}

func TestForeignOwnerRefused(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give a directory to another user: run this test as root (e.g. sudo go test -run TestForeignOwnerRefused ./agent)")
	}
	dir := filepath.Join(shortTempDir(t), "theirs")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	_, err := agent.New(agent.Config{SocketDir: dir, Logger: testLogger(t)})
	if !errors.Is(err, agent.ErrUnsafeDir) || !strings.Contains(err.Error(), "uid 65534") {
		t.Fatalf("New on a dir owned by uid 65534: %v, want ErrUnsafeDir naming the owner", err)
	}
}

func TestDirPathTooLong(t *testing.T) {
	dir := "/" + strings.Repeat("d", 100)
	_, err := agent.New(agent.Config{SocketDir: dir, Logger: testLogger(t)})
	if err == nil || !strings.Contains(err.Error(), "too long") {
		t.Fatalf("New with a %d-byte dir: %v, want a too-long error", len(dir), err)
	}
}

// staleSocket leaves a socket file nobody listens on, as a killed agent
// would.
func staleSocket(t *testing.T, path string) {
	t.Helper()
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
}

func TestStaleSocketsRemoved(t *testing.T) {
	dir := shortTempDir(t)
	for _, n := range []string{"vport0p1", "org.example", ".control", ".new-0000abcd"} {
		staleSocket(t, filepath.Join(dir, n))
	}
	if err := os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	a := newAgent(t, agent.Config{SocketDir: dir})
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if strings.Join(names, ",") != "notes.txt,sub" {
		t.Errorf("after New the dir holds %v, want [notes.txt sub]", names)
	}
	// A port can take a name a stale socket had.
	addPort(t, a, 0, agenttest.NewPort(1, "org.example"))
	if !exists(filepath.Join(dir, "org.example")) {
		t.Error("socket not created over a removed stale one")
	}
}

func TestSecondAgentRefused(t *testing.T) {
	a := newAgent(t, agent.Config{})
	l, err := a.ListenControl()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error)
	go func() { done <- a.ServeControl(l) }()
	addPort(t, a, 0, agenttest.NewPort(1, "busy"))
	// The control socket answers once ServeControl runs.
	if _, err := agent.QueryStatus(waitCtx(t), a.Dir()); err != nil {
		t.Fatalf("QueryStatus: %v", err)
	}
	_, err = agent.New(agent.Config{SocketDir: a.Dir(), Logger: testLogger(t)})
	if !errors.Is(err, agent.ErrBusy) {
		t.Fatalf("second New on a served dir: %v, want ErrBusy", err)
	}
	if !exists(filepath.Join(a.Dir(), "busy")) {
		t.Error("the second New removed the first agent's socket")
	}
	a.Close()
	if err := <-done; err != nil {
		t.Errorf("ServeControl after Close: %v", err)
	}
}

// lockedBuffer collects log output for assertions.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestNameClashAcrossDevices: two devices each have a port named alike. The
// first published keeps the socket (its client undisturbed); the other is
// served under its fallback vport name, the clash is logged and shown in
// Status; when the first goes away the second takes the name.
func TestNameClashAcrossDevices(t *testing.T) {
	var logs lockedBuffer
	a := newAgent(t, agent.Config{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	const name = "org.example.clash"
	sock := filepath.Join(a.Dir(), name)
	first := agenttest.NewPort(1, name)
	first.SetHostConnected(true)
	addPort(t, a, 0, first)
	c := connectClient(t, first, sock)
	fi1, err := os.Lstat(sock)
	if err != nil {
		t.Fatal(err)
	}

	second := agenttest.NewPort(1, name)
	second.SetHostConnected(true)
	addPort(t, a, 1, second)
	fallback := filepath.Join(a.Dir(), "vport1p1")
	if !exists(fallback) {
		t.Fatalf("the clashing port has no socket %s", fallback)
	}
	fi2, err := os.Lstat(sock)
	if err != nil || !os.SameFile(fi1, fi2) {
		t.Fatalf("the first port's socket was replaced (%v): a clash must never overwrite it", err)
	}
	s1, _ := status(a, 0, 1)
	s2, _ := status(a, 1, 1)
	if s1.Socket != sock || s1.NameProblem != "" {
		t.Errorf("first port %+v, want socket %s and no name problem", s1, sock)
	}
	if s2.Socket != fallback || s2.Name != name || !strings.Contains(s2.NameProblem, "name clash") || !strings.Contains(s2.NameProblem, "device 0 port 1") {
		t.Errorf("second port %+v, want socket %s, name %s and a name clash with device 0 port 1", s2, fallback, name)
	}
	if l := logs.String(); !strings.Contains(l, "another port already has this name") || !strings.Contains(l, "owner_dev=0") {
		t.Errorf("the clash is not logged with its owner:\n%s", l)
	}
	// The first port's client still talks to the first port.
	first.Deliver([]byte("one"))
	buf := make([]byte, 3)
	c.SetReadDeadline(time.Now().Add(patience))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "one" {
		t.Fatalf("first client read %q, %v", buf, err)
	}
	// The second is usable on its fallback socket.
	connectClient(t, second, fallback)

	first.Remove()
	waitStatus(t, a, "the second port to take the freed name", func(s []agent.PortStatus) bool {
		return len(s) == 1 && s[0].Device == 1 && s[0].Socket == sock && s[0].NameProblem == ""
	})
	if exists(fallback) {
		t.Errorf("%s still exists after the port moved to its name", fallback)
	}
}

func TestUnusableNameShownInStatus(t *testing.T) {
	a := newAgent(t, agent.Config{})
	addPort(t, a, 0, agenttest.NewPort(3, "a/b"))
	s, _ := status(a, 0, 3)
	if s.Socket != filepath.Join(a.Dir(), "vport0p3") || !strings.Contains(s.NameProblem, "unusable") {
		t.Errorf("status %+v, want the fallback socket and an unusable-name problem", s)
	}
}
