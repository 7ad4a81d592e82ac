package agent

import (
	"fmt"
	"io/fs"
	"path/filepath"
	"time"
)

// Mode says how a port is offered to guest programs.
type Mode string

const (
	// ModeListen publishes the port as a Unix socket the agent listens on
	// (the default).
	ModeListen Mode = "listen"
	// ModeConnect makes the agent dial a Unix socket another program
	// listens on (PortConfig.Target), redialing with backoff.
	ModeConnect Mode = "connect"
	// ModePTY offers the port as a pseudo-terminal as well as a socket
	// (SOCKET_DIR/NAME.pty → /dev/pts/N; see ConsoleConfig for how the two
	// share the port), for any port, console or not.
	ModePTY Mode = "pty"
	// ModeIgnore leaves the port alone: no socket, never opened towards the
	// host.
	ModeIgnore Mode = "ignore"
)

// Valid reports whether m is one of the modes ("" counts as ModeListen).
func (m Mode) Valid() bool {
	switch m {
	case "", ModeListen, ModeConnect, ModePTY, ModeIgnore:
		return true
	}
	return false
}

// PortConfig configures one port. The zero value is the default: listen on
// SOCKET_DIR/NAME with Config.SocketMode, owned by the agent's user.
type PortConfig struct {
	Mode Mode
	// Socket is where a listen (or pty) port's socket goes: a file name in
	// the socket directory, or an absolute path ("" : the port's name in
	// the socket directory).
	Socket string
	// Target is the absolute path of the socket a connect port dials.
	Target string
	// Owner and Group, when not nil, are the uid and gid the socket file
	// is given (chown); nil leaves the agent's.
	Owner, Group *int
	// SocketMode is the permission of the socket file (0: Config.SocketMode).
	SocketMode fs.FileMode
	// Node, when not nil, says whether the port also gets a character
	// device node (/dev/vport<D>p<ID> and /dev/virtio-ports/NAME; see
	// docs/nodes.md); nil leaves it to run --nodes. The agent itself only
	// carries it: cmd/vserial-agent makes the nodes.
	Node *bool
}

// Check reports the first inconsistency of c, in words an operator can act
// on.
func (c PortConfig) Check() error {
	if !c.Mode.Valid() {
		return fmt.Errorf("mode %q: want listen, connect, pty or ignore", c.Mode)
	}
	m := c.effectiveMode()
	if m == ModeConnect {
		if c.Target == "" {
			return fmt.Errorf("mode connect needs a target (the socket to dial)")
		}
		if !filepath.IsAbs(c.Target) {
			return fmt.Errorf("target %q: must be an absolute path", c.Target)
		}
		if len(c.Target) > sunPathMax {
			return fmt.Errorf("target %q: %d bytes, at most %d fit a socket path", c.Target, len(c.Target), sunPathMax)
		}
	} else if c.Target != "" {
		return fmt.Errorf("target is only for mode connect (mode is %s)", m)
	}
	if m == ModeConnect || m == ModeIgnore {
		switch {
		case c.Socket != "":
			return fmt.Errorf("socket is only for modes listen and pty (mode is %s)", m)
		case c.Owner != nil || c.Group != nil:
			return fmt.Errorf("owner and group are only for modes listen and pty (mode is %s)", m)
		case c.SocketMode != 0:
			return fmt.Errorf("socket-mode is only for modes listen and pty (mode is %s)", m)
		}
	}
	if c.SocketMode&^fs.ModePerm != 0 {
		return fmt.Errorf("socket-mode %v: only permission bits (at most 0777)", c.SocketMode)
	}
	if c.Socket != "" {
		if filepath.IsAbs(c.Socket) {
			if filepath.Clean(c.Socket) != c.Socket || c.Socket == "/" {
				return fmt.Errorf("socket %q: not a clean path to a file", c.Socket)
			}
		} else if err := plainName(c.Socket); err != nil {
			return fmt.Errorf("socket %q: %v (give a file name in the socket directory or an absolute path)", c.Socket, err)
		}
	}
	if c.Owner != nil && *c.Owner < 0 || c.Group != nil && *c.Group < 0 {
		return fmt.Errorf("owner and group must be non-negative ids")
	}
	return nil
}

func (c PortConfig) effectiveMode() Mode {
	if c.Mode == "" {
		return ModeListen
	}
	return c.Mode
}

// same reports whether a and b place the port the same way (so a port that
// moves from one to the other keeps its socket or connection).
func (c PortConfig) same(o PortConfig) bool {
	eq := func(a, b *int) bool { return a == nil && b == nil || a != nil && b != nil && *a == *b }
	return c.effectiveMode() == o.effectiveMode() && c.Target == o.Target && c.Socket == o.Socket &&
		c.SocketMode == o.SocketMode && eq(c.Owner, o.Owner) && eq(c.Group, o.Group)
}

// Redial backoff of connect ports, when Config leaves it zero.
const (
	DefaultRedialMin = 100 * time.Millisecond
	DefaultRedialMax = 5 * time.Second
)

// backoff is the redial schedule of a connect port: the wait doubles after
// every failed dial or short connection, up to max, and starts again from
// min after a connection that lasted at least max.
type backoff struct {
	min, max time.Duration
	next     time.Duration
}

func newBackoff(min, max time.Duration) *backoff {
	return &backoff{min: min, max: max, next: min}
}

// failed returns how long to wait before the next dial, and doubles the
// wait after it.
func (b *backoff) failed() time.Duration {
	d := b.next
	b.next = min(b.next*2, b.max)
	return d
}

// ended is called when a connection ends after lasting d; it returns how
// long to wait before redialing.
func (b *backoff) ended(d time.Duration) time.Duration {
	if d >= b.max {
		b.next = b.min
	}
	return b.failed()
}
