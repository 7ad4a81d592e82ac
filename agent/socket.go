package agent

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
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
	case name == "":
		return errors.New("empty")
	case name == "." || name == "..":
		return errors.New("is a dot entry (. or ..)")
	case strings.ContainsRune(name, '/'):
		return errors.New("contains '/'")
	case len(name) > a.maxName:
		return fmt.Errorf("%d bytes long, at most %d fit a socket path in %s", len(name), a.maxName, a.dir)
	case name == ControlName || strings.HasPrefix(name, tmpPrefix):
		return errors.New("reserved for the agent")
	case isVportName(name):
		return errors.New("reserved for unnamed ports")
	}
	for _, c := range []byte(name) {
		if c < 0x20 || c == 0x7f {
			return errors.New("contains a control character")
		}
	}
	return nil
}

// listen creates the socket a.dir/name with mode a.sockMode. It binds under
// a temporary name, sets the mode, then hard-links the socket to its final
// name, so the final name never exists with another mode and an existing
// file is never replaced.
func (a *Agent) listen(name string) (*net.UnixListener, error) {
	final := filepath.Join(a.dir, name)
	tmp := filepath.Join(a.dir, fmt.Sprintf("%s%08x", tmpPrefix, a.tmpSeq.Add(1)^uint32(os.Getpid())<<12))
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("agent: listen %s: %w", final, err)
	}
	// The agent removes the final name itself; the temporary one is gone
	// by the time Close runs.
	ln.SetUnlinkOnClose(false)
	defer os.Remove(tmp)
	if err := os.Chmod(tmp, a.sockMode); err != nil {
		ln.Close()
		return nil, fmt.Errorf("agent: listen %s: %w", final, err)
	}
	if err := os.Link(tmp, final); err != nil {
		ln.Close()
		return nil, fmt.Errorf("agent: listen %s: %w", final, err)
	}
	return ln, nil
}
