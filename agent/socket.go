package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// vportName is the fallback socket name of a port, the name Linux gives the
// port's character device (/dev/vport<D>p<P>).
func vportName(dev int, id uint32) string {
	return fmt.Sprintf("vport%dp%d", dev, id)
}

// isVportName reports whether name has the form vport<digits>p<digits>.
// Such names are reserved for the fallback so that a host-chosen name can
// never take the socket of another port.
func isVportName(name string) bool {
	rest, ok := strings.CutPrefix(name, "vport")
	if !ok {
		return false
	}
	d, p, ok := strings.Cut(rest, "p")
	return ok && allDigits(d) && allDigits(p)
}

func allDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

const tmpPrefix = ".new-"

func isTempName(name string) bool {
	return strings.HasPrefix(name, tmpPrefix) && len(name) == tmpNameLen
}

// checkName says why a host-chosen port name cannot be a socket name in the
// directory, or returns nil. The driver validates names too; the agent does
// not rely on it because the name becomes a path.
func (a *Agent) checkName(name string) error {
	switch {
	case plainName(name) != nil:
		return plainName(name)
	case len(name) > a.maxName:
		return fmt.Errorf("%d bytes long, at most %d fit a socket path in %s", len(name), a.maxName, a.dir)
	case name == ControlName || strings.HasPrefix(name, tmpPrefix):
		return errors.New("reserved for the agent")
	case isVportName(name):
		return errors.New("reserved for unnamed ports")
	}
	return nil
}

// plainName says why name cannot be a file name of its own in a directory,
// or returns nil.
func plainName(name string) error {
	switch {
	case name == "":
		return errors.New("empty")
	case name == "." || name == "..":
		return errors.New("is a dot entry (. or ..)")
	case strings.ContainsRune(name, '/'):
		return errors.New("contains '/'")
	}
	for _, c := range []byte(name) {
		if c < 0x20 || c == 0x7f {
			return errors.New("contains a control character")
		}
	}
	return nil
}

// sockPerm is how a socket file is created: its mode and, when not nil,
// its owner and group.
type sockPerm struct {
	mode         os.FileMode
	owner, group *int
}

// tmpSockName is the name a socket is bound under in its private directory.
const tmpSockName = "s"

// listenAt creates the socket final with perm. It binds in a private
// directory next to final (mode 0700, made by the agent, so no other user
// can touch what is in it), sets owner and mode on the socket it bound
// without following a symbolic link, then hard-links it to its final name,
// so the final name never exists with another mode and an existing file
// is never replaced. A parent directory everyone may write to without the
// sticky bit is refused. With replaceStale (sockets the operator placed
// outside the socket directory), a socket file already at final that
// nobody listens on is removed first.
func (a *Agent) listenAt(final string, perm sockPerm, replaceStale bool) (*net.UnixListener, error) {
	fail := func(err error) (*net.UnixListener, error) {
		return nil, fmt.Errorf("agent: listen %s: %w", final, err)
	}
	parent := filepath.Dir(final)
	if err := checkParent(parent); err != nil {
		return fail(err)
	}
	priv, err := a.privateDir(parent)
	if err != nil {
		return fail(err)
	}
	defer os.RemoveAll(priv)
	tmp := filepath.Join(priv, tmpSockName)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return fail(err)
	}
	// The agent removes the final name itself; the temporary one is gone
	// by the time Close runs.
	ln.SetUnlinkOnClose(false)
	if a.afterBind != nil {
		a.afterBind(tmp)
	}
	if err := setPerm(tmp, perm); err != nil {
		ln.Close()
		return fail(err)
	}
	err = os.Link(tmp, final)
	if errors.Is(err, fs.ErrExist) && replaceStale && staleSocket(final) {
		a.log.Info("removing stale socket", "path", final)
		if rerr := os.Remove(final); rerr == nil || errors.Is(rerr, fs.ErrNotExist) {
			err = os.Link(tmp, final)
		}
	}
	if err != nil {
		ln.Close()
		return fail(err)
	}
	return ln, nil
}

// privateDir makes a directory only the agent's user can enter, with a
// fresh temporary name in parent.
func (a *Agent) privateDir(parent string) (string, error) {
	for range 16 {
		// Random, so another user who may write to parent (a sticky
		// directory) cannot take the names in advance.
		dir := filepath.Join(parent, fmt.Sprintf("%s%08x", tmpPrefix, rand.Uint32()))
		err := os.Mkdir(dir, 0o700)
		if err == nil {
			return dir, nil
		}
		if !errors.Is(err, fs.ErrExist) {
			return "", err
		}
	}
	return "", errors.New("no free temporary name")
}

// setPerm gives the socket file at path perm's owner and mode. It acts on
// the file through a descriptor opened without following a symbolic link
// and checked to be a socket: whatever replaced the socket, a link to
// another file never gets the socket's mode.
func setPerm(path string, perm sockPerm) error {
	fd, err := unix.Open(path, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("stat %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return fmt.Errorf("%s is no longer the socket the agent bound (file type %#o); refusing to change its owner or mode", path, st.Mode&unix.S_IFMT)
	}
	if perm.owner != nil || perm.group != nil {
		uid, gid := -1, -1
		if perm.owner != nil {
			uid = *perm.owner
		}
		if perm.group != nil {
			gid = *perm.group
		}
		if err := unix.Fchownat(fd, "", uid, gid, unix.AT_EMPTY_PATH); err != nil {
			return fmt.Errorf("chown %s: %w", path, err)
		}
	}
	// Linux has no fchmod for an O_PATH descriptor before fchmodat2
	// (6.6): chmod through its /proc entry reaches the same inode.
	if err := os.Chmod(fmt.Sprintf("/proc/self/fd/%d", fd), perm.mode); err != nil {
		return fmt.Errorf("chmod %s: %w", path, err)
	}
	return nil
}

// staleSocket reports whether path is a socket file nobody listens on.
func staleSocket(path string) bool {
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode().Type() != fs.ModeSocket {
		return false
	}
	c, err := net.Dial("unix", path)
	if err == nil {
		c.Close()
		return false
	}
	return errors.Is(err, syscall.ECONNREFUSED)
}
