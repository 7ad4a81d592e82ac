package agent

// Console ports as pseudo-terminals: their configuration, when a port gets
// a console, and its life. The pty pair, its symlink and window size are in
// pty.go, the pumps between the port and the pty master in console_io.go,
// the program run on the pty slave in console_program.go.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vserial/vserial/internal/guard"
)

// PTYSuffix ends the name of a console's symlink in the socket directory:
// SOCKET_DIR/NAME.pty → /dev/pts/N, next to the socket SOCKET_DIR/NAME.
const PTYSuffix = ".pty"

// Restart backoff of the console program, when ConsoleConfig leaves it zero.
const (
	// DefaultMaxConsoles is ConsoleConfig.MaxPerDevice when left zero.
	DefaultMaxConsoles = 4
	DefaultRestartMin  = time.Second
	DefaultRestartMax  = 30 * time.Second
	// restartReset is how long a program must have run for the backoff to
	// start again from RestartMin.
	restartReset = 10 * time.Second
	// stopGrace is how long a console program has between SIGTERM and
	// SIGKILL when the agent stops it.
	stopGrace = 3 * time.Second
)

// ConsoleConfig says what the agent does with console ports (CONSOLE_PORT,
// a QEMU virtconsole). The zero value publishes them as plain sockets, like
// any other port.
type ConsoleConfig struct {
	// PTY gives every console port a pseudo-terminal as well as its
	// socket, with the symlink SOCKET_DIR/NAME.pty pointing at the slave.
	// Host bytes go to the terminal and what programs write on it goes to
	// the host, except while a client is connected to the socket: that
	// client then has the port, and the terminal waits.
	PTY bool
	// Exec, when not empty, is a program and its arguments that the agent
	// runs on each console's terminal (it implies PTY): in a new session,
	// with the slave as its controlling terminal and as stdin, stdout and
	// stderr. It is restarted when it exits (after RestartMin, doubling to
	// RestartMax while it keeps exiting within 10 s) and stopped (SIGHUP
	// and SIGTERM to its process group, SIGKILL after 3 s) when the port
	// goes away or the agent closes.
	Exec []string
	// Env is the program's environment (nil: MinimalEnv). The agent's
	// own environment is never passed on: the host decides when the
	// program runs and drives it, and the agent's variables (a service
	// manager's sockets, credentials) are not the host's business.
	Env []string
	// MaxPerDevice caps the console ports of one device that get a
	// terminal (and a program) because they are consoles (0:
	// DefaultMaxConsoles): the device decides how many consoles it has.
	// Further consoles stay plain sockets, with a log line, until one
	// with a terminal goes away. Ports configured with mode=pty are the
	// operator's choice and are not counted.
	MaxPerDevice int
	// RestartMin and RestartMax bound the wait before a restart (defaults
	// DefaultRestartMin, DefaultRestartMax).
	RestartMin, RestartMax time.Duration
	// OnResize, when not nil, is called (from the port's goroutine) each
	// time a console's terminal gets a new size from the host.
	OnResize func(ConsoleResize)
}

func (c ConsoleConfig) enabled() bool { return c.PTY || len(c.Exec) > 0 }

// MinimalEnv is a console program's environment when ConsoleConfig.Env is
// nil: what login(1) and a getty need, nothing of the agent's.
var MinimalEnv = []string{
	"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
	"TERM=vt220",
	"HOME=/",
}

// check validates c and fills in defaults.
func (c *ConsoleConfig) check() error {
	if c.RestartMin <= 0 {
		c.RestartMin = DefaultRestartMin
	}
	if c.RestartMax <= 0 {
		c.RestartMax = DefaultRestartMax
	}
	if c.MaxPerDevice < 0 {
		return fmt.Errorf("agent: console cap %d per device: want 0 (default %d) or more", c.MaxPerDevice, DefaultMaxConsoles)
	}
	if c.MaxPerDevice == 0 {
		c.MaxPerDevice = DefaultMaxConsoles
	}
	for _, kv := range c.Env {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return fmt.Errorf("agent: console environment %q: want KEY=VALUE", kv)
		}
	}
	if c.RestartMax < c.RestartMin {
		return fmt.Errorf("agent: console restart max %v is below restart min %v", c.RestartMax, c.RestartMin)
	}
	if len(c.Exec) > 0 {
		if c.Exec[0] == "" {
			return errors.New("agent: console program: empty program name")
		}
		if !filepath.IsAbs(c.Exec[0]) {
			return fmt.Errorf("agent: console program %q: give an absolute path", c.Exec[0])
		}
		fi, err := os.Stat(c.Exec[0])
		if err != nil {
			return fmt.Errorf("agent: console program: %w", err)
		}
		if fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
			return fmt.Errorf("agent: console program %s: not an executable file", c.Exec[0])
		}
	}
	return nil
}

// ConsoleResize reports a new terminal size of a console port.
type ConsoleResize struct {
	Device     int
	ID         uint32
	Name       string
	PTY        string // the slave, /dev/pts/N
	Cols, Rows uint16
}

// ConsolePort is implemented by ports that can be consoles: the driver's
// port does (through the adapter in cmd/vserial-agent). A Port that does not
// implement it is never a console.
type ConsolePort interface {
	Port
	// IsConsole reports whether the device announced the port as a console.
	IsConsole() bool
	// Size returns the console size the host last gave (0, 0: none).
	Size() (cols, rows uint16)
}

// ptyConsole is the terminal of one console port.
type ptyConsole struct {
	pt     *port
	p      Port
	ctx    context.Context // ends when the terminal is retired
	cancel context.CancelFunc
	master *os.File // non-blocking, in the Go poller
	slave  *os.File // held open so the master never reads EIO between programs
	tty    string   // /dev/pts/N

	// Guarded by pt.a.mu.
	link       string // symlink path, "" if none
	pumpCancel context.CancelFunc
	pumpDone   chan struct{}
	closed     bool

	// Used by the port's watcher only.
	cols, rows uint16

	progDone chan struct{} // closed when the program runner ended (nil: no program)
}

// consoleWanted reports whether pt gets a terminal: a port in mode pty
// does, and so does a console port in mode listen when ConsoleConfig asks
// for it; capped says the latter is one console too many for its device.
// a.mu is held.
func (a *Agent) consoleWanted(pt *port) (want, capped bool) {
	switch pt.cfg.effectiveMode() {
	case ModePTY:
		return true, false
	case ModeListen:
		cp, ok := pt.p.(ConsolePort)
		if !a.console.enabled() || !ok || !cp.IsConsole() {
			return false, false
		}
		if pt.con != nil {
			return true, false
		}
		n := 0
		for _, o := range a.ports {
			if o.dev == pt.dev && o.con != nil && o.cfg.effectiveMode() != ModePTY {
				n++
			}
		}
		if n >= a.console.MaxPerDevice {
			return false, true
		}
		return true, false
	}
	return false, false
}

// size returns the console size the host gave pt's port (0, 0: none, or
// not a console).
func (c *ptyConsole) size() (cols, rows uint16) {
	if cp, ok := c.pt.p.(ConsolePort); ok {
		return cp.Size()
	}
	return 0, 0
}

// checkConsole gives pt its terminal when it is (or has become) a console,
// keeps the symlink on the port's current name and applies size changes.
// The watcher calls it on every change of the port.
func (a *Agent) checkConsole(pt *port) {
	a.mu.Lock()
	if pt.gone || a.closed {
		a.mu.Unlock()
		return
	}
	c := pt.con
	want, capped := a.consoleWanted(pt)
	if capped && !pt.consoleCapped {
		pt.consoleCapped = true
		pt.log.Warn("console port left without a terminal: the device has its cap of consoles with one", "max", a.console.MaxPerDevice)
	}
	if c != nil && !want {
		// The configuration changed (a name arrived that has an entry of
		// its own): the terminal goes.
		c.closeLocked()
		pt.con = nil
		a.mu.Unlock()
		pt.log.Info("console terminal removed: the port's configuration has none")
		return
	}
	if c == nil {
		if !want {
			a.mu.Unlock()
			return
		}
		var err error
		c, err = newPTYConsole(pt)
		if err != nil {
			a.mu.Unlock()
			pt.log.Error("cannot create the console terminal; the port stays a socket only", "err", err)
			return
		}
		pt.con = c
		pt.log.Info("console terminal created", "pty", c.tty)
		if len(a.console.Exec) > 0 {
			c.progDone = make(chan struct{})
			a.wg.Add(1)
			go c.runProgram()
		}
		if pt.client == nil {
			c.attachLocked()
		}
	}
	c.placeLinkLocked()
	a.mu.Unlock()
	c.applySize()
}

func newPTYConsole(pt *port) (*ptyConsole, error) {
	master, slave, tty, err := openPTY()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(pt.ctx)
	return &ptyConsole{pt: pt, p: pt.p, ctx: ctx, cancel: cancel, master: master, slave: slave, tty: tty}, nil
}

// closeLocked retires the terminal: pumps and program stopped, symlink
// removed; the pty pair is closed once both have finished (which hangs up
// the slave). a.mu is held.
func (c *ptyConsole) closeLocked() {
	if c.closed {
		return
	}
	c.closed = true
	c.cancel()
	c.removeLinkLocked()
	cancel, done := c.pumpCancel, c.pumpDone
	c.pumpCancel, c.pumpDone = nil, nil
	a := c.pt.a
	a.wg.Add(1)
	go func() {
		defer guard.Recover()
		defer a.wg.Done()
		if cancel != nil {
			cancel()
			<-done
		}
		if c.progDone != nil {
			<-c.progDone // the runner sees c.ctx end and stops the program
		}
		c.master.Close()
		c.slave.Close()
	}()
}

// hasConsole reports whether pt has a terminal.
func (pt *port) hasConsole() bool {
	pt.a.mu.Lock()
	defer pt.a.mu.Unlock()
	return pt.con != nil
}
