package agent

// The pseudo-terminal of a console port: opening the pair in raw mode, its
// symlink SOCKET_DIR/NAME.pty next to the socket, and its window size.

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// openPTY opens a new pseudo-terminal pair (/dev/ptmx, unlock, TIOCGPTN)
// and puts the slave in a sane cooked mode. Not u-root's pty.New: it needs
// the process's own terminal (/dev/tty, which a service has not) and opens
// the master blocking, outside Go's poller.
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
