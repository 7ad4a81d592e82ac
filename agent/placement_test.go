package agent_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/vserial/vserial/agent"
	"github.com/vserial/vserial/agent/agenttest"
)

// Regression test: the mode was set with chmod on the temporary path, which
// follows a symbolic link put there after the bind.
func TestSocketModeNeverFollowsSymlink(t *testing.T) {
	a := newAgent(t, agent.Config{})
	victim := filepath.Join(shortTempDir(t), "victim")
	if err := os.WriteFile(victim, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(victim, 0o644); err != nil {
		t.Fatal(err)
	}
	agent.SetAfterBind(a, func(path string) {
		if err := os.Remove(path); err != nil {
			t.Error(err)
		}
		if err := os.Symlink(victim, path); err != nil {
			t.Error(err)
		}
	})
	_, err := a.ListenControl()
	if err == nil || !strings.Contains(err.Error(), "no longer the socket") {
		t.Errorf("ListenControl with the socket swapped for a symlink: %v, want a refusal", err)
	}
	if got := perm(t, victim); got != 0o644 {
		t.Errorf("the symlink's target got mode %#o, want it left at 0644", got)
	}
	entries, _ := os.ReadDir(a.Dir())
	for _, e := range entries {
		t.Errorf("left in the socket dir: %s", e.Name())
	}
}

// Regression test: a world-writable directory without the sticky bit was
// only warned about, although anyone could replace or squat its sockets.
func TestWorldWritableDirRefused(t *testing.T) {
	dir := shortTempDir(t)
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	_, err := agent.New(agent.Config{SocketDir: dir, Logger: testLogger(t)})
	if !errors.Is(err, agent.ErrUnsafeDir) || !strings.Contains(err.Error(), "writable by everyone") {
		t.Fatalf("New on a 0777 dir: %v, want ErrUnsafeDir", err)
	}
	// The sticky bit makes it safe (as /tmp).
	if err := os.Chmod(dir, 0o777|fs.ModeSticky); err != nil {
		t.Fatal(err)
	}
	newAgent(t, agent.Config{SocketDir: dir})
}

// Regression test: the parent of an absolute socket= path was not checked
// at all.
func TestWorldWritableSocketParentRefused(t *testing.T) {
	open := filepath.Join(shortTempDir(t), "open")
	if err := os.Mkdir(open, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(open, "p.sock")
	cfg := agent.Config{
		SocketDir: filepath.Join(shortTempDir(t), "run"),
		Logger:    testLogger(t),
		Ports:     map[string]agent.PortConfig{"p": {Socket: sock}},
	}
	_, err := agent.New(cfg)
	if !errors.Is(err, agent.ErrUnsafeDir) || !strings.Contains(err.Error(), open) {
		t.Fatalf("New with a socket in a 0777 dir: %v, want ErrUnsafeDir naming %s", err, open)
	}
	// Made unsafe after the start: the port is not published there.
	if err := os.Chmod(open, 0o755); err != nil {
		t.Fatal(err)
	}
	a := newAgent(t, cfg)
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	addPort(t, a, 0, agenttest.NewPort(1, "p"))
	if exists(sock) {
		t.Errorf("socket created in a world-writable dir")
	}
	if entries, _ := os.ReadDir(open); len(entries) != 0 {
		t.Errorf("left in the world-writable dir: %v", entries)
	}
}

// Regression test: a second agent on a busy directory removed the first
// one's console links (NAME.pty) before it found the directory busy.
func TestSecondAgentTouchesNothing(t *testing.T) {
	a := newAgent(t, agent.Config{})
	link := filepath.Join(a.Dir(), "console0.pty")
	if err := os.Symlink("/dev/pts/77", link); err != nil {
		t.Fatal(err)
	}
	addPort(t, a, 0, agenttest.NewPort(1, "busy"))
	// Before the control socket exists (the first agent still starting)
	// and after.
	for _, serving := range []bool{false, true} {
		if serving {
			serveControl(t, a)
			if _, err := agent.QueryStatus(waitCtx(t), a.Dir()); err != nil {
				t.Fatalf("QueryStatus: %v", err)
			}
		}
		_, err := agent.New(agent.Config{SocketDir: a.Dir(), Logger: testLogger(t)})
		if !errors.Is(err, agent.ErrBusy) {
			t.Fatalf("second New (control served: %v): %v, want ErrBusy", serving, err)
		}
		if _, err := os.Lstat(link); err != nil {
			t.Fatalf("second New (control served: %v) removed the first agent's console link: %v", serving, err)
		}
		if !exists(filepath.Join(a.Dir(), "busy")) {
			t.Fatalf("second New (control served: %v) removed the first agent's socket", serving)
		}
	}
	// Once the first agent is gone, the next one takes the directory.
	a.Close()
	newAgent(t, agent.Config{SocketDir: a.Dir()})
	if _, err := os.Lstat(link); err == nil {
		t.Error("a stale console link survived the next agent's start")
	}
}

// The owner is set through the same descriptor as the mode (fchownat with
// AT_EMPTY_PATH on an O_PATH descriptor): a real change of owner works.
func TestSocketOwnerOfAnotherUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give a socket to another user (CI runs as root; run with sudo)")
	}
	sock := filepath.Join(shortTempDir(t), "p.sock")
	nobody := 65534
	a := newAgent(t, agent.Config{Ports: map[string]agent.PortConfig{"p": {Socket: sock, Owner: &nobody, Group: &nobody, SocketMode: 0o640}}})
	addPort(t, a, 0, agenttest.NewPort(1, "p"))
	fi, err := os.Lstat(sock)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if st.Uid != 65534 || st.Gid != 65534 || fi.Mode().Perm() != 0o640 {
		t.Errorf("%s: uid %d gid %d mode %#o, want 65534 65534 0640", sock, st.Uid, st.Gid, fi.Mode().Perm())
	}
}
