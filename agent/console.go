package agent

// Console ports as pseudo-terminals: the pty pair, its symlink in the
// socket directory, the pumps between the port and the pty master, the
// window size, and the program run on the pty slave.

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

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

// openPTY opens a new pseudo-terminal pair (/dev/ptmx, unlock, TIOCGPTN)
// and puts the slave in a sane cooked mode.
func openPTY() (master, slave *os.File, tty string, err error) {
	mfd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, "", fmt.Errorf("open /dev/ptmx: %w", err)
	}
	fail := func(e error) (*os.File, *os.File, string, error) {
		unix.Close(mfd)
		return nil, nil, "", e
	}
	if err := unix.IoctlSetPointerInt(mfd, unix.TIOCSPTLCK, 0); err != nil {
		return fail(fmt.Errorf("unlock pty (TIOCSPTLCK): %w", err))
	}
	n, err := unix.IoctlGetUint32(mfd, unix.TIOCGPTN)
	if err != nil {
		return fail(fmt.Errorf("pty number (TIOCGPTN): %w", err))
	}
	tty = "/dev/pts/" + strconv.FormatUint(uint64(n), 10)
	sfd, err := unix.Open(tty, unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fail(fmt.Errorf("open %s: %w", tty, err))
	}
	if err := saneTermios(sfd); err != nil {
		unix.Close(sfd)
		return fail(fmt.Errorf("%s: %w", tty, err))
	}
	// mfd is non-blocking: os.NewFile registers it with the poller, so
	// reads and writes park the goroutine, and deadlines work.
	return os.NewFile(uintptr(mfd), "/dev/ptmx"), os.NewFile(uintptr(sfd), tty), tty, nil
}

// saneTermios sets what `stty sane` would on the slave: canonical input
// with echo and signals, CR→NL on input, NL→CRNL on output, 8 bits, UTF-8.
// A program such as a shell or getty changes it as it likes.
func saneTermios(fd int) error {
	t, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return fmt.Errorf("TCGETS: %w", err)
	}
	t.Iflag &^= unix.IGNBRK | unix.INLCR | unix.IGNCR | unix.IXOFF | unix.IUCLC | unix.ISTRIP
	t.Iflag |= unix.BRKINT | unix.ICRNL | unix.IXON | unix.IUTF8
	t.Oflag &^= unix.OLCUC | unix.OCRNL | unix.ONOCR | unix.ONLRET
	t.Oflag |= unix.OPOST | unix.ONLCR
	t.Cflag &^= unix.CSIZE | unix.PARENB
	t.Cflag |= unix.CS8 | unix.CREAD
	t.Lflag |= unix.ISIG | unix.ICANON | unix.IEXTEN | unix.ECHO | unix.ECHOE | unix.ECHOK | unix.ECHOCTL | unix.ECHOKE
	t.Lflag &^= unix.ECHONL | unix.NOFLSH | unix.TOSTOP
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, t); err != nil {
		return fmt.Errorf("TCSETS: %w", err)
	}
	return nil
}

// linkName is the symlink the console should have now: NAME.pty for a
// usable host name, else vport<D>p<ID>.pty. a.mu is held.
func (c *ptyConsole) linkName() string {
	a, pt := c.pt.a, c.pt
	base := vportName(pt.dev, pt.p.ID())
	if name := pt.name; name != "" && a.checkName(name) == nil {
		base = name
	}
	return filepath.Join(a.dir, base+PTYSuffix)
}

// placeLinkLocked points the symlink at the slave under the port's current
// name. An existing file of that name is never replaced (logged instead).
func (c *ptyConsole) placeLinkLocked() {
	want := c.linkName()
	if want == c.link || c.closed {
		return
	}
	if err := os.Symlink(c.tty, want); err != nil {
		c.pt.log.Error("cannot create the console symlink", "link", want, "pty", c.tty, "err", err)
		return
	}
	if c.link != "" {
		c.removeLinkLocked()
	}
	c.link = want
	c.pt.log.Info("console terminal published", "link", want, "pty", c.tty)
}

func (c *ptyConsole) removeLinkLocked() {
	if c.link == "" {
		return
	}
	if err := os.Remove(c.link); err != nil && !errors.Is(err, fs.ErrNotExist) {
		c.pt.log.Warn("cannot remove the console symlink", "link", c.link, "err", err)
	}
	c.link = ""
}

// applySize gives the terminal the size the host last sent (TIOCSWINSZ on
// the master: the foreground process group of the slave gets SIGWINCH).
// Called by the port's watcher only.
func (c *ptyConsole) applySize() {
	cols, rows := c.size()
	if cols == c.cols && rows == c.rows {
		return
	}
	c.cols, c.rows = cols, rows
	if cols == 0 || rows == 0 {
		return // no size known: leave the terminal's
	}
	raw, err := c.master.SyscallConn()
	if err == nil {
		cerr := raw.Control(func(fd uintptr) {
			err = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols})
		})
		if err == nil {
			err = cerr
		}
	}
	if err != nil {
		c.pt.log.Warn("cannot resize the console terminal", "pty", c.tty, "cols", cols, "rows", rows, "err", err)
		return
	}
	c.pt.log.Info("console resized", "pty", c.tty, "cols", cols, "rows", rows)
	if f := c.pt.a.console.OnResize; f != nil {
		f(ConsoleResize{Device: c.pt.dev, ID: c.pt.p.ID(), Name: c.pt.p.Name(), PTY: c.tty, Cols: cols, Rows: rows})
	}
}

// attachLocked starts moving bytes between the port and the terminal.
// a.mu is held; the port has no socket client.
func (c *ptyConsole) attachLocked() {
	if c.closed || c.pumpCancel != nil {
		return
	}
	a := c.pt.a
	ctx, cancel := context.WithCancel(c.ctx)
	done := make(chan struct{})
	c.pumpCancel, c.pumpDone = cancel, done
	// No deadline left over from the previous attachment (its setter has
	// finished: detach waited for done).
	c.master.SetDeadline(time.Time{})
	a.wg.Add(1)
	go func() {
		defer guard.Recover()
		defer a.wg.Done()
		defer close(done)
		woke := make(chan struct{})
		go func() {
			defer guard.Recover()
			// Ending ctx wakes whatever master read or write a pump is
			// blocked in.
			<-ctx.Done()
			c.master.SetDeadline(longAgo)
			close(woke)
		}()
		// A console is open already (the driver answers CONSOLE_PORT with
		// PORT_OPEN 1); a port in mode pty is opened by its terminal, and
		// stays open while the terminal exists.
		if err := c.p.SetGuestOpen(ctx, true); err != nil {
			if ctx.Err() == nil {
				c.pt.log.Warn("console: cannot open the port for the terminal", "err", err)
			}
			cancel()
			<-woke
			return
		}
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer guard.Recover()
			defer wg.Done()
			c.hostToTTY(ctx)
		}()
		c.ttyToHost(ctx)
		cancel()
		wg.Wait()
		<-woke
	}()
}

// detach stops the pumps and waits for them (a socket client takes the
// port). Bytes a pump was writing to the terminal when it stopped are
// counted as discarded by the port.
func (pt *port) detachConsole() {
	a := pt.a
	a.mu.Lock()
	c := pt.con
	if c == nil || c.pumpCancel == nil {
		a.mu.Unlock()
		return
	}
	cancel, done := c.pumpCancel, c.pumpDone
	c.pumpCancel, c.pumpDone = nil, nil
	a.mu.Unlock()
	cancel()
	<-done
	pt.log.Info("console terminal detached: a socket client has the port", "pty", c.tty)
}

// attachConsole gives the port back to its terminal when the socket client
// left.
func (pt *port) attachConsole() {
	a := pt.a
	a.mu.Lock()
	defer a.mu.Unlock()
	if c := pt.con; c != nil && !pt.gone && !a.closed && pt.client == nil {
		c.attachLocked()
		pt.log.Info("console terminal attached", "pty", c.tty)
	}
}

// hostToTTY writes host bytes to the master until ctx ends.
func (c *ptyConsole) hostToTTY(ctx context.Context) {
	w := &fileWriter{f: c.master}
	for {
		_, err := c.p.Recv(ctx, w)
		if w.err != nil || err != nil {
			if ctx.Err() == nil && !c.p.Removed() {
				c.pt.log.Warn("console: host→terminal stopped", "pty", c.tty, "err", errors.Join(err, w.err))
			}
			return
		}
	}
}

// ttyToHost sends what programs write on the slave to the host until ctx
// ends. It reads only while the host side is connected, like a session.
func (c *ptyConsole) ttyToHost(ctx context.Context) {
	p := c.p
	raw, err := c.master.SyscallConn()
	if err != nil {
		c.pt.log.Error("console: terminal→host", "err", err)
		return
	}
	r := newGatedReader(p, raw)
	for {
		if !p.HostConnected() {
			ch := p.Changed()
			if !p.HostConnected() {
				select {
				case <-ch:
				case <-ctx.Done():
					return
				}
				continue
			}
		}
		_, err := p.Send(ctx, r)
		switch {
		case err == nil || errors.Is(err, errHostGone):
			continue
		case ctx.Err() != nil || p.Removed():
			return
		}
		c.pt.log.Warn("console: terminal→host stopped", "pty", c.tty, "err", err)
		return
	}
}

// fileWriter writes to the master, remembering the first error.
type fileWriter struct {
	f   *os.File
	err error
}

func (w *fileWriter) Write(b []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	n, err := w.f.Write(b)
	if err != nil {
		w.err = err
	}
	return n, err
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

// runProgram runs ConsoleConfig.Exec on the slave until the port's context
// ends, restarting it with backoff.
func (c *ptyConsole) runProgram() {
	defer guard.Recover()
	a, pt := c.pt.a, c.pt
	defer a.wg.Done()
	defer close(c.progDone)
	cfg := a.console
	env := cfg.Env
	if env == nil {
		env = MinimalEnv
	}
	delay := cfg.RestartMin
	for {
		start := time.Now()
		cmd := exec.Command(cfg.Exec[0], cfg.Exec[1:]...)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = c.slave, c.slave, c.slave
		cmd.Env = env
		cmd.Dir = "/"
		// A session of its own with the slave (its fd 0) as controlling
		// terminal, like getty gives a login shell.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
		if err := cmd.Start(); err != nil {
			pt.log.Error("console program cannot start", "program", cfg.Exec[0], "err", err)
		} else {
			pt.log.Info("console program started", "program", cfg.Exec[0], "pid", cmd.Process.Pid, "pty", c.tty)
			waited := make(chan error, 1)
			go func() {
				defer guard.Recover()
				waited <- cmd.Wait()
			}()
			select {
			case err := <-waited:
				pt.log.Warn("console program exited", "program", cfg.Exec[0], "pid", cmd.Process.Pid, "status", exitStatus(err))
			case <-c.ctx.Done():
				stopProgram(cmd, waited)
				pt.log.Info("console program stopped", "program", cfg.Exec[0], "pid", cmd.Process.Pid)
				return
			}
		}
		if time.Since(start) >= restartReset {
			delay = cfg.RestartMin
		}
		pt.log.Info("console program restarts", "in", delay.String())
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-c.ctx.Done():
			t.Stop()
			return
		}
		delay = min(2*delay, cfg.RestartMax)
	}
}

// stopProgram ends the program's process group: SIGHUP and SIGTERM (what
// a terminal hang-up and a shutdown send), SIGKILL after stopGrace.
func stopProgram(cmd *exec.Cmd, waited <-chan error) {
	pgid := cmd.Process.Pid // Setsid: the program leads its own group
	_ = unix.Kill(-pgid, unix.SIGHUP)
	_ = unix.Kill(-pgid, unix.SIGTERM)
	t := time.NewTimer(stopGrace)
	defer t.Stop()
	select {
	case <-waited:
		_ = unix.Kill(-pgid, unix.SIGKILL) // what is left of the group
	case <-t.C:
		_ = unix.Kill(-pgid, unix.SIGKILL)
		<-waited
	}
}

func exitStatus(err error) string {
	if err == nil {
		return "exit 0"
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return "signal " + ws.Signal().String()
		}
		return "exit " + strconv.Itoa(ee.ExitCode())
	}
	return err.Error()
}

// removeStaleLinks removes console symlinks an earlier agent left: NAME.pty
// pointing into /dev/pts.
func (a *Agent) removeStaleLinks() {
	entries, err := os.ReadDir(a.dir)
	if err != nil {
		return // removeStale reports it
	}
	for _, e := range entries {
		if e.Type()&fs.ModeSymlink == 0 || !strings.HasSuffix(e.Name(), PTYSuffix) {
			continue
		}
		path := filepath.Join(a.dir, e.Name())
		if t, err := os.Readlink(path); err != nil || !strings.HasPrefix(t, "/dev/pts/") {
			continue
		}
		if err := os.Remove(path); err == nil {
			a.log.Info("removed stale console symlink", "link", path)
		}
	}
}

// hasConsole reports whether pt has a terminal.
func (pt *port) hasConsole() bool {
	pt.a.mu.Lock()
	defer pt.a.mu.Unlock()
	return pt.con != nil
}
