package agent

// The socket directory: created or checked (a real directory of ours, not
// world-writable without the sticky bit, never through a symlink), locked
// against a second agent, and cleared of what a previous agent left.
// docs/sockets.md says what an operator sees; placement_test.go pins it.

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
)

// prepareDir creates dir if missing and checks that it is a real directory
// owned by the effective user.
func prepareDir(dir string, mode fs.FileMode, log *slog.Logger) error {
	fi, err := os.Lstat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
			return fmt.Errorf("agent: create socket dir: %w", err)
		}
		err = os.Mkdir(dir, mode)
		if err == nil {
			// Mkdir applies the umask; the operator asked for mode.
			err = os.Chmod(dir, mode)
			log.Info("created socket dir", "dir", dir, "mode", fmt.Sprintf("%#o", mode))
		} else if errors.Is(err, fs.ErrExist) {
			err = nil
		}
		if err != nil {
			return fmt.Errorf("agent: create socket dir: %w", err)
		}
		fi, err = os.Lstat(dir)
	}
	if err != nil {
		return fmt.Errorf("agent: socket dir: %w", err)
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		return fmt.Errorf("agent: socket dir %s is a symbolic link; give the real directory instead: %w", dir, ErrUnsafeDir)
	}
	if !fi.IsDir() {
		return fmt.Errorf("agent: socket dir %s is not a directory (%v): %w", dir, fi.Mode().Type(), ErrUnsafeDir)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("agent: socket dir %s: cannot read its owner: %w", dir, ErrUnsafeDir)
	}
	if euid := os.Geteuid(); int(st.Uid) != euid {
		return fmt.Errorf("agent: socket dir %s is owned by uid %d, not by us (euid %d); use a directory of our own: %w", dir, st.Uid, euid, ErrUnsafeDir)
	}
	if err := checkWritable(dir, fi); err != nil {
		return fmt.Errorf("agent: socket dir: %w", err)
	}
	return nil
}

// checkWritable refuses a directory everyone may write to without the
// sticky bit: anyone could replace or squat the sockets in it.
func checkWritable(dir string, fi fs.FileInfo) error {
	if fi.Mode().Perm()&0o002 != 0 && fi.Mode()&fs.ModeSticky == 0 {
		return fmt.Errorf("%s is writable by everyone and not sticky (mode %#o): other users could replace or squat its sockets; remove o+w or set the sticky bit: %w", dir, fi.Mode().Perm(), ErrUnsafeDir)
	}
	return nil
}

// checkParent checks the directory a socket is created in (the socket
// directory, or the parent of an absolute socket= path) just before use.
func checkParent(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	return checkWritable(dir, fi)
}

// lockDir takes the socket directory for this agent (an exclusive flock on
// the directory itself, released when the returned file is closed or the
// agent dies). It wraps ErrBusy when another agent holds it.
func lockDir(dir string) (*os.File, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("agent: lock socket dir %s: %w", dir, err)
	}
	f := os.NewFile(uintptr(fd), dir)
	if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("agent: %s is locked by another agent; stop it or use another --socket-dir: %w", dir, ErrBusy)
		}
		return nil, fmt.Errorf("agent: lock socket dir %s: %w", dir, err)
	}
	return f, nil
}

// removeStale removes the sockets an earlier agent left behind, unless that
// agent still answers on the control socket.
func (a *Agent) removeStale() error {
	ctl := filepath.Join(a.dir, ControlName)
	if c, err := net.Dial("unix", ctl); err == nil {
		c.Close()
		return fmt.Errorf("agent: %s answers; stop the other agent or use another --socket-dir: %w", ctl, ErrBusy)
	}
	entries, err := os.ReadDir(a.dir)
	if err != nil {
		return fmt.Errorf("agent: read socket dir: %w", err)
	}
	for _, e := range entries {
		path := filepath.Join(a.dir, e.Name())
		if e.IsDir() && isTempName(e.Name()) {
			// A private directory a socket was bound in, left by an agent
			// that died while creating a socket.
			if err := os.RemoveAll(path); err != nil {
				return fmt.Errorf("agent: remove stale temporary directory: %w", err)
			}
			a.log.Info("removed stale temporary directory", "path", path)
			continue
		}
		if e.Type()&fs.ModeSocket == 0 || !a.mayCreate(e.Name()) {
			a.log.Info("leaving foreign file in socket dir alone", "path", path, "type", e.Type().String())
			continue
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("agent: remove stale socket: %w", err)
		}
		a.log.Info("removed stale socket", "path", path)
	}
	return nil
}

// mayCreate reports whether name is a socket name the agent could create.
func (a *Agent) mayCreate(name string) bool {
	if name == ControlName || isTempName(name) || isVportName(name) {
		return true
	}
	return a.checkName(name) == nil
}
