package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
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

// listen creates the socket a.dir/name with mode a.sockMode.
func (a *Agent) listen(name string) (*net.UnixListener, error) {
	return a.listenAt(filepath.Join(a.dir, name), sockPerm{mode: a.sockMode}, false)
}

// listenAt creates the socket final with perm. It binds under a temporary
// name in the same directory, sets mode and owner, then hard-links the
// socket to its final name, so the final name never exists with another
// mode and an existing file is never replaced. With replaceStale (sockets
// the operator placed outside the socket directory), a socket file already
// at final that nobody listens on is removed first.
func (a *Agent) listenAt(final string, perm sockPerm, replaceStale bool) (*net.UnixListener, error) {
	tmp := filepath.Join(filepath.Dir(final), fmt.Sprintf("%s%08x", tmpPrefix, a.tmpSeq.Add(1)^uint32(os.Getpid())<<12))
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("agent: listen %s: %w", final, err)
	}
	// The agent removes the final name itself; the temporary one is gone
	// by the time Close runs.
	ln.SetUnlinkOnClose(false)
	defer os.Remove(tmp)
	fail := func(err error) (*net.UnixListener, error) {
		ln.Close()
		return nil, fmt.Errorf("agent: listen %s: %w", final, err)
	}
	if perm.owner != nil || perm.group != nil {
		uid, gid := -1, -1
		if perm.owner != nil {
			uid = *perm.owner
		}
		if perm.group != nil {
			gid = *perm.group
		}
		if err := os.Lchown(tmp, uid, gid); err != nil {
			return fail(err)
		}
	}
	if err := os.Chmod(tmp, perm.mode); err != nil {
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
		return fail(err)
	}
	return ln, nil
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
