// Command vsguest is the guest side of the tests/qemu harness. Inside the
// test guest it runs as u-root's uinit and serves commands that the host
// sends over the serial console (protocol: tests/qemu/internal/wire): each
// command runs as a child process — an external program, or this binary
// re-executed for one of its built-in subcommands — and its exit code and
// combined output go back to the host.
//
// The built-in subcommands move and check data on a path that is either a
// device file (/dev/vportNpM of the in-kernel virtio_console driver) or a
// Unix socket (a port exposed by vserial-agent), so one measurement runs
// unchanged against both.
//
// It is a test tool: static (CGO_ENABLED=0), Linux only, never shipped.
package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vserial/vserial/tests/qemu/internal/wire"
	"golang.org/x/sys/unix"
)

type builtin struct {
	usage string
	run   func(args []string) error
}

var builtins map[string]builtin

// stdout receives what built-ins print; tests replace it.
var stdout io.Writer = os.Stdout

// eofPoll is how long serveOn waits after end of input before reading
// again; 0 makes end of input final (tests).
var eofPoll = 100 * time.Millisecond

func init() {
	builtins = map[string]builtin{
		"serve":        {"serve", func([]string) error { return serve() }},
		"modprobe":     {"modprobe MODULE...", modprobe},
		"vports":       {"vports", vports},
		"sink":         {"sink PATH N [count] [ready] [raw]", sink},
		"source":       {"source PATH N SEED [block] [raw]", source},
		"echo":         {"echo PATH", echo},
		"pingpong":     {"pingpong PATH COUNT [samples] [raw]", pingpong},
		"cputime":      {"cputime PID", cputime},
		"sleep":        {"sleep SECONDS", sleep},
		"ls":           {"ls DIR...", ls},
		"cat":          {"cat FILE...", cat},
		"write":        {"write FILE STRING", write},
		"readlink":     {"readlink PATH", readlink},
		"wait-path":    {"wait-path PATH SECONDS", waitPath},
		"wait-gone":    {"wait-gone PATH SECONDS", waitGone},
		"touch":        {"touch FILE", touch},
		"stream":       {"stream PATH SEED N1 FILE N2", stream},
		"duplex":       {"duplex PATH NIN SEEDIN NOUT SEEDOUT", duplex},
		"rejected":     {"rejected PATH SECONDS", rejected},
		"greet":        {"greet PATH REPLY", greet},
		"listen-greet": {"listen-greet PATH COUNT", listenGreet},
		"stat":         {"stat PATH", statFile},
		"sndbuf":       {"sndbuf PATH", sndbuf},
		"signal":       {"signal PID SIGNUM", signal},
		"minish":       {"minish", minish},
		"nodecheck":    {"nodecheck PATH CHECK [ARG]", nodecheck},
		"ptyxfer":      {"ptyxfer PATH N SEED", ptyXfer},
		"calib":        {"calib PINGS ITERATIONS", calib},
		"calib-peer":   {"calib-peer [poller]", calibPeer},
		"calib-proc":   {"calib-proc PINGS", calibProc},
		"msink":        {"msink [raw] N PATH...", msink},
		"msource":      {"msource [raw] N SEED PATH...", msource},
		"trickle":      {"trickle PATH COUNT INTERVAL_US", trickle},
		"hold":         {"hold READYFILE SECONDS PATH...", hold},
		"procsnap":     {"procsnap PID ADDR", procsnap},
		"wait-nochild": {"wait-nochild PID SECONDS", waitNoChild},
		"as-uid":       {"as-uid UID ARGV [ARGS]", asUID},
		"ctlflood":     {"ctlflood UID DIR IDLE SUBS READYFILE SECONDS", ctlflood},
		"symlink":      {"symlink TARGET LINK", symlink},
		"rm":           {"rm PATH", rm},
		"probe-serve":  {"probe-serve PATH SOCK", probeServe},
		"probe":        {"probe SOCK OP [ARGS...]", probe},
		"schedtrace":   {"schedtrace start|stop", schedtrace},
		"poweroff":     {"poweroff", func([]string) error { return unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF) }},
		"help":         {"help", help},
	}
}

func main() {
	args := os.Args[1:]
	self := filepath.Base(os.Args[0])
	switch {
	case self == "uinit" || len(args) == 0:
		// u-root's init starts the helper as /bin/uinit.
		args = []string{"serve"}
	case self != "vsguest" && self != "exe":
		// Installed under a built-in's name, e.g. /sbin/modprobe, for
		// programs (vserial-agent) that run it.
		if _, ok := builtins[self]; ok {
			args = append([]string{self}, args...)
		}
	}
	b, ok := builtins[args[0]]
	if !ok {
		fmt.Fprintf(os.Stderr, "vsguest: unknown subcommand %q (try help)\n", args[0])
		os.Exit(2)
	}
	if err := b.run(args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "vsguest %s: %v\n", args[0], err)
		os.Exit(1)
	}
}

func help([]string) error {
	names := make([]string, 0, len(builtins))
	for n := range builtins {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		fmt.Fprintln(stdout, builtins[n].usage)
	}
	return nil
}

// ---- command server ----

type console struct {
	mu sync.Mutex
	w  io.Writer
}

func (c *console) write(s string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, _ = io.WriteString(c.w, s)
}

func serve() error {
	// Kernel messages share the console with the protocol; keep only errors.
	_ = os.WriteFile("/proc/sys/kernel/printk", []byte("4 4 1 4"), 0)
	os.Setenv("PATH", "/bbin:/bin:/usr/bin:/sbin:/usr/sbin")

	var r io.Reader = os.Stdin
	var w io.Writer = os.Stdout
	if tty, err := os.OpenFile("/dev/ttyS0", os.O_RDWR|unix.O_NOCTTY, 0); err == nil {
		if err := makeRaw(int(tty.Fd())); err != nil {
			fmt.Fprintf(tty, "vsguest: raw mode: %v\n", err)
		}
		r, w = tty, tty
	}
	return serveOn(r, w)
}

// serveOn serves commands read from r, writing replies to w. At end of
// input it keeps polling: a serial console reports EOF when nothing is
// attached.
func serveOn(r io.Reader, w io.Writer) error {
	con := &console{w: w}
	con.write("\n" + wire.Ready())
	br := bufio.NewReader(r)
	for {
		line, err := br.ReadString('\n')
		if line = strings.TrimRight(line, "\r\n"); line != "" {
			c, perr := wire.ParseCommand(line)
			switch {
			case perr == nil:
				go runCommand(con, c)
			case errors.Is(perr, wire.ErrNotCommand):
				// A human at the console (see docs/testing.md): run it and print plainly.
				go runHuman(con, strings.Fields(line))
			default:
				con.write(fmt.Sprintf("vsguest: %v\n", perr))
			}
		}
		if err != nil {
			if err == io.EOF && eofPoll > 0 {
				time.Sleep(eofPoll)
				continue
			}
			return err
		}
	}
}

// makeRaw turns off echo, line editing and output processing on the serial
// tty, so bytes pass through unchanged in both directions.
func makeRaw(fd int) error {
	t, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return err
	}
	t.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	t.Oflag &^= unix.OPOST
	t.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	t.Cflag &^= unix.CSIZE | unix.PARENB
	t.Cflag |= unix.CS8
	t.Cc[unix.VMIN] = 1
	t.Cc[unix.VTIME] = 0
	return unix.IoctlSetTermios(fd, unix.TCSETS, t)
}

// command builds the child process for argv: a built-in runs as a re-exec
// of this binary, anything else is looked up in PATH.
func command(argv []string) *exec.Cmd {
	if _, ok := builtins[argv[0]]; ok && argv[0] != "serve" {
		cmd := exec.Command("/proc/self/exe", argv...)
		cmd.Args[0] = "vsguest"
		return cmd
	}
	return exec.Command(argv[0], argv[1:]...)
}

func runCommand(con *console, c wire.Command) {
	cmd := command(c.Argv)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		con.write(wire.Out(c.ID, []byte(err.Error()+"\n")) + wire.End(c.ID, -1))
		return
	}
	con.write(wire.PID(c.ID, cmd.Process.Pid))
	code := exitCode(cmd.Wait())
	con.write(wire.Out(c.ID, out.Bytes()) + wire.End(c.ID, code))
}

func runHuman(con *console, argv []string) {
	cmd := command(argv)
	out, err := cmd.CombinedOutput()
	con.write(fmt.Sprintf("%s[exit %d]\n", out, exitCode(err)))
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ee.ExitCode()
	}
	return -1
}

// ---- virtio-console ports of the in-kernel driver ----

// vports prints "NAME DEVICE" for every port the in-kernel driver created
// (NAME is "-" for an unnamed port), creating the device node from sysfs
// when devtmpfs did not (no udev in the guest).
func vports([]string) error {
	const class = "/sys/class/virtio-ports"
	ents, err := os.ReadDir(class)
	if err != nil {
		return err
	}
	for _, e := range ents {
		name := "-"
		if b, err := os.ReadFile(filepath.Join(class, e.Name(), "name")); err == nil && len(bytes.TrimSpace(b)) > 0 {
			name = string(bytes.TrimSpace(b))
		}
		dev := filepath.Join("/dev", e.Name())
		note := ""
		if _, err := os.Stat(dev); errors.Is(err, fs.ErrNotExist) {
			if err := mknodFromSysfs(filepath.Join(class, e.Name(), "dev"), dev); err != nil {
				return err
			}
			note = " created"
		}
		fmt.Fprintf(stdout, "%s %s%s\n", name, dev, note)
	}
	return nil
}

func mknodFromSysfs(devFile, node string) error {
	b, err := os.ReadFile(devFile)
	if err != nil {
		return err
	}
	maj, min, ok := strings.Cut(strings.TrimSpace(string(b)), ":")
	if !ok {
		return fmt.Errorf("%s: bad contents %q", devFile, b)
	}
	ma, err1 := strconv.ParseUint(maj, 10, 32)
	mi, err2 := strconv.ParseUint(min, 10, 32)
	if err := errors.Join(err1, err2); err != nil {
		return fmt.Errorf("%s: %w", devFile, err)
	}
	return unix.Mknod(node, unix.S_IFCHR|0o600, int(unix.Mkdev(uint32(ma), uint32(mi))))
}

// ---- small tools ----

// cputime prints the user and system CPU seconds a process has used.
func cputime(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: cputime PID")
	}
	f, err := procStat("/proc/" + args[0])
	if err != nil {
		return err
	}
	const clkTck = 100 // USER_HZ on x86 Linux
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "utime_s=%.2f stime_s=%.2f\n", float64(ut)/clkTck, float64(st)/clkTck)
	return nil
}

// procStat returns the fields of DIR/stat (DIR: /proc/PID) after the
// command name, which is in parentheses and may hold spaces: f[0] is the
// state (field 3 of proc(5)), f[1] the parent's pid, f[11] utime (field
// 14), f[12] stime.
func procStat(dir string) ([]string, error) {
	b, err := os.ReadFile(dir + "/stat")
	if err != nil {
		return nil, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil, fmt.Errorf("malformed stat %q", b)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return nil, fmt.Errorf("malformed stat %q", b)
	}
	return f, nil
}

func signal(args []string) error {
	if len(args) != 2 {
		return errors.New("usage: signal PID SIGNUM")
	}
	pid, err1 := strconv.Atoi(args[0])
	sig, err2 := strconv.Atoi(args[1])
	if err := errors.Join(err1, err2); err != nil {
		return err
	}
	return unix.Kill(pid, unix.Signal(sig))
}

func sleep(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: sleep SECONDS")
	}
	s, err := strconv.ParseFloat(args[0], 64)
	if err != nil {
		return err
	}
	time.Sleep(time.Duration(s * float64(time.Second)))
	return nil
}

func ls(args []string) error {
	for _, dir := range args {
		ents, err := os.ReadDir(dir)
		if err != nil {
			return err
		}
		for _, e := range ents {
			fmt.Fprintln(stdout, e.Name())
		}
	}
	return nil
}

func cat(args []string) error {
	for _, p := range args {
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		stdout.Write(b)
	}
	return nil
}

func write(args []string) error {
	if len(args) != 2 {
		return errors.New("usage: write FILE STRING")
	}
	f, err := os.OpenFile(args[0], os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(args[1]); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func readlink(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: readlink PATH")
	}
	target, err := os.Readlink(args[0])
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, target)
	return nil
}

func waitPath(args []string) error {
	if len(args) != 2 {
		return errors.New("usage: wait-path PATH SECONDS")
	}
	s, err := strconv.ParseFloat(args[1], 64)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(time.Duration(s * float64(time.Second)))
	for {
		if _, err := os.Stat(args[0]); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not appear within %ss", args[0], args[1])
		}
		time.Sleep(20 * time.Millisecond)
	}
}
