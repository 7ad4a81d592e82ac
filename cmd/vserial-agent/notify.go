package main

import (
	"fmt"
	"net"
	"os"
	"strings"
	"time"
)

// The systemd readiness protocol (sd_notify(3)), written out: a service of
// Type=notify finds the path of a datagram socket in $NOTIFY_SOCKET and
// sends newline-separated VAR=VALUE assignments to it. The agent sends
// READY=1 once every port present at start has its socket, STATUS= lines
// saying what it serves, and STOPPING=1 when shutdown begins. Without
// $NOTIFY_SOCKET nothing is sent. Written out rather than taken from
// go-systemd: one datagram send does not pay for a dependency.

// notifyEnv is the variable systemd (or any supervisor speaking the
// protocol) sets.
const notifyEnv = "NOTIFY_SOCKET"

// notifyTimeout bounds one datagram send: a supervisor that stopped reading
// must not hold up the agent.
const notifyTimeout = 2 * time.Second

// notifier sends readiness messages to the supervisor. The zero value (no
// socket) sends nothing.
type notifier struct {
	addr *net.UnixAddr
}

// newNotifier reads $NOTIFY_SOCKET and removes it from the environment, so
// programs the agent starts do not report to the agent's supervisor. An
// absolute path or an abstract name (leading '@') is accepted; anything
// else is an error and nothing will be sent.
func newNotifier() (notifier, error) {
	path, ok := os.LookupEnv(notifyEnv)
	if !ok {
		return notifier{}, nil
	}
	os.Unsetenv(notifyEnv)
	switch {
	case path == "":
		return notifier{}, fmt.Errorf("$%s is set but empty", notifyEnv)
	case strings.ContainsRune(path, 0):
		return notifier{}, fmt.Errorf("$%s contains a NUL byte", notifyEnv)
	case path[0] != '/' && path[0] != '@':
		return notifier{}, fmt.Errorf("$%s=%q: want an absolute path or an abstract name starting with '@'", notifyEnv, path)
	case len(path) > sunPathMax:
		return notifier{}, fmt.Errorf("$%s=%q: longer than a Unix socket path can be (%d bytes)", notifyEnv, path, sunPathMax)
	}
	// Go turns a leading '@' into the abstract namespace's NUL.
	return notifier{addr: &net.UnixAddr{Name: path, Net: "unixgram"}}, nil
}

// sunPathMax is the longest socket path Linux accepts (sun_path is 108 bytes,
// one of them the terminating NUL).
const sunPathMax = 107

// enabled reports whether a supervisor asked for notifications.
func (n notifier) enabled() bool { return n.addr != nil }

// send sends one message made of the given VAR=VALUE lines. Newlines inside
// a value would start a new assignment, so they become spaces.
func (n notifier) send(lines ...string) error {
	if n.addr == nil {
		return nil
	}
	for i, l := range lines {
		lines[i] = strings.ReplaceAll(l, "\n", " ")
	}
	c, err := net.DialUnix("unixgram", nil, n.addr)
	if err != nil {
		return fmt.Errorf("notify %s: %w", n.addr.Name, err)
	}
	defer c.Close()
	_ = c.SetWriteDeadline(time.Now().Add(notifyTimeout))
	if _, err := c.Write([]byte(strings.Join(lines, "\n"))); err != nil {
		return fmt.Errorf("notify %s: %w", n.addr.Name, err)
	}
	return nil
}
