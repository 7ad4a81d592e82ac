package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"path"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vserial/vserial/tests/qemu/internal/wire"
)

// consoleTap keeps everything that arrives on a console's host socket, so
// a test can wait for text at or after an offset and take exact bytes.
type consoleTap struct {
	mu   sync.Mutex
	buf  []byte
	err  error         // why reading stopped
	more chan struct{} // closed (and replaced) whenever buf grows or reading stops
}

func tapConsole(conn net.Conn) *consoleTap {
	c := &consoleTap{more: make(chan struct{})}
	go func() {
		b := make([]byte, 64<<10)
		for {
			n, err := conn.Read(b)
			c.mu.Lock()
			c.buf = append(c.buf, b[:n]...)
			if err != nil {
				c.err = err
			}
			close(c.more)
			c.more = make(chan struct{})
			c.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	return c
}

// Len is how many bytes have arrived so far.
func (c *consoleTap) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.buf)
}

// wait calls found with everything from offset from on until it reports
// done, or ctx ends.
func (c *consoleTap) wait(ctx context.Context, from int, what string, found func([]byte) bool) error {
	for {
		c.mu.Lock()
		ok := found(c.buf[min(from, len(c.buf)):])
		err, more := c.err, c.more
		c.mu.Unlock()
		switch {
		case ok:
			return nil
		case err != nil:
			return fmt.Errorf("console closed (%v) before %s", err, what)
		}
		select {
		case <-more:
		case <-ctx.Done():
			return fmt.Errorf("console never showed %s (%v); since offset %d it had: %q", what, ctx.Err(), from, c.text(from))
		}
	}
}

// waitFor waits for s at or after from and returns the offset just past it.
func (c *consoleTap) waitFor(ctx context.Context, from int, s string) (int, error) {
	end := -1
	err := c.wait(ctx, from, strconv.Quote(s), func(b []byte) bool {
		if i := bytes.Index(b, []byte(s)); i >= 0 {
			end = from + i + len(s)
			return true
		}
		return false
	})
	return end, err
}

// waitMatch waits for a match of re at or after from, returning its
// submatches and the offset just past it.
func (c *consoleTap) waitMatch(ctx context.Context, from int, re *regexp.Regexp) ([]string, int, error) {
	var sub []string
	end := -1
	err := c.wait(ctx, from, re.String(), func(b []byte) bool {
		loc := re.FindSubmatchIndex(b)
		if loc == nil {
			return false
		}
		for i := 0; i < len(loc); i += 2 {
			sub = append(sub, string(b[loc[i]:loc[i+1]]))
		}
		end = from + loc[1]
		return true
	})
	return sub, end, err
}

// bytesAt waits until n bytes from offset from have arrived and returns them.
func (c *consoleTap) bytesAt(ctx context.Context, from, n int) ([]byte, error) {
	var out []byte
	err := c.wait(ctx, from, fmt.Sprintf("%d bytes at offset %d", n, from), func(b []byte) bool {
		if len(b) < n {
			return false
		}
		out = append([]byte(nil), b[:n]...)
		return true
	})
	return out, err
}

// text is what arrived from offset from on, cut to its last 2000 bytes.
func (c *consoleTap) text(from int) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	b := c.buf[min(from, len(c.buf)):]
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

// startConsoleAgent starts vserial-agent with args and registers a cleanup
// that prints its log (and goroutines, SIGQUIT) if the test fails while it
// runs.
func startConsoleAgent(ctx context.Context, t *testing.T, g *Guest, args ...string) *runningAgent {
	t.Helper()
	a := &runningAgent{g: g, args: args}
	p, err := a.start(ctx)
	if err != nil {
		t.Fatalf("starting vserial-agent %v: %v", args, err)
	}
	a.proc = p
	t.Cleanup(func() {
		if a.stopd {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if !p.Exited() {
			if !t.Failed() {
				return
			}
			_ = p.Signal(ctx, 3)
		}
		out, err := p.Wait(ctx)
		if t.Failed() {
			t.Logf("vserial-agent %v ended (%v); its log:\n%s", args, err, out)
		}
	})
	return a
}

// Ports of the console boot: a named virtconsole at port 0 and a plain
// port.
const (
	consoleName  = "org.vserial.console"
	consolePlain = "org.vserial.plain"
)

// consolePIDRe matches minish's answer to "pid".
var consolePIDRe = regexp.MustCompile(`^pid=([0-9]+) sid=([0-9]+)\r\n$`)

// consoleEnv is the one boot TestAgentConsole's cases share. The host is
// attached to the console's chardev from the start and stays attached.
type consoleEnv struct {
	g         *Guest
	conn      *net.UnixConn // host side of the console
	tap       *consoleTap   // everything that arrived on conn
	addr      string        // the function's PCI address
	link      string        // the console's pseudo-terminal symlink
	startLine string        // the agent's emergency-write start line
}

// consoleExecEnv is consoleEnv with an agent running --console-exec of
// the helper's minish on the console, for the cases of consoleExecCases.
type consoleExecEnv struct {
	*consoleEnv
	a   *runningAgent
	tty string // the console's terminal, /dev/pts/N
	// pid is the pid of port 0's program, known from consoleExecTyping on
	// and updated by consoleExecRestart.
	pid string
}

// typeLine sends a line as a user at a terminal would (Enter is CR) and
// waits for what follows it up to the next prompt.
func (env *consoleExecEnv) typeLine(ctx context.Context, t *testing.T, line string) string {
	t.Helper()
	start := env.tap.Len()
	if _, err := io.WriteString(env.conn, line+"\r"); err != nil {
		t.Fatal(err)
	}
	// Echo first (the terminal is cooked), then the output.
	echoed, err := env.tap.waitFor(ctx, start, line+"\r\n")
	if err != nil {
		t.Fatalf("typed %q: %v", line, err)
	}
	end, err := env.tap.waitFor(ctx, echoed, wire.MinishPrompt)
	if err != nil {
		t.Fatalf("typed %q: %v", line, err)
	}
	out, err := env.tap.bytesAt(ctx, echoed, end-len(wire.MinishPrompt)-echoed)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// checkSameProgram types "pid" and checks that port 0's program is still
// the one with env.pid; when names the moment in the error.
func (env *consoleExecEnv) checkSameProgram(ctx context.Context, t *testing.T, when string) {
	t.Helper()
	if m := consolePIDRe.FindStringSubmatch(env.typeLine(ctx, t, "pid")); m == nil || m[1] != env.pid {
		t.Errorf("%s: pid printed %q, want the same program %s", when, m, env.pid)
	}
}

// consoleExecCases run in this order on one --console-exec agent, each
// using what the cases before it left: the program's pid, the agent
// still running. consoleExecLastGasp ends the agent, so it comes last.
var consoleExecCases = []guestCase[*consoleExecEnv]{
	{"typing", consoleExecTyping},
	{"restart", consoleExecRestart},
	{"hotplug-console", consoleExecHotplugConsole},
	{"socket-client", consoleExecSocketClient},
	{"last-gasp", consoleExecLastGasp},
}

// TestAgentConsole runs vserial-agent on a device with a virtconsole at
// port 0 (named, with a socket chardev on the host) and a plain port:
// consolePTY with --console-pty, then consoleExecCases with
// --console-exec, each case on the same boot.
//
// QEMU marks a virtconsole host-connected from its creation and never
// throttles it: what the guest writes while no host program is attached to
// the chardev socket is dropped by the chardev. So the host attaches
// before the agent starts, and stays attached.
func TestAgentConsole(t *testing.T) {
	t.Parallel()
	opts := Options{Ports: []Port{{Console: true, Name: consoleName}, {Name: consolePlain, Nr: 1}}, MaxPorts: 4}
	opts.Files = append(opts.Files, BuildAgent(t))
	g := Boot(t, opts)
	conn := g.DialPort(t, consoleName)
	addr := path.Base(findVirtioConsole(t, g))
	env := &consoleEnv{
		g: g, conn: conn, tap: tapConsole(conn), addr: addr,
		link:      AgentSocket(consoleName + ".pty"),
		startLine: "vserial-agent: starting on " + addr + "\n",
	}
	t.Run("pty", func(t *testing.T) { consolePTY(t, env) })
	t.Run("exec", func(t *testing.T) {
		x := startConsoleExec(t, env)
		for _, c := range consoleExecCases {
			if !t.Run(c.name, func(t *testing.T) { c.run(t, x) }) {
				// The program's and the agent's state are unknown now.
				t.Fatalf("%s failed: the later cases need its state, skipped", c.name)
			}
		}
	})
}

// consolePTY: with --console-pty the agent's start line arrives on the
// console through emergency write before any port is up; the console gets
// a NAME.pty symlink to /dev/pts/N (the plain port none); a guest program
// opens the terminal through the symlink and exchanges 48 KiB with the host,
// byte-exact both ways (raw mode); after SIGTERM the symlink is gone.
func consolePTY(t *testing.T, env *consoleEnv) {
	ctx := caseCtx(t, 4*time.Minute)
	from := env.tap.Len()
	a := startConsoleAgent(ctx, t, env.g, "--console-pty")
	if _, err := env.tap.waitFor(ctx, from, env.startLine); err != nil {
		t.Fatalf("emergency-write start line: %v", err)
	}
	t.Logf("host saw the start line %q", strings.TrimSpace(env.startLine))
	for _, p := range []string{AgentSocket(consoleName), env.link, AgentSocket(consolePlain)} {
		if err := env.g.WaitPath(ctx, p, 60*time.Second); err != nil {
			t.Fatalf("agent with --console-pty: %v", err)
		}
	}
	tty := strings.TrimSpace(env.g.MustRun(t, "readlink", env.link))
	if !regexp.MustCompile(`^/dev/pts/[0-9]+$`).MatchString(tty) {
		t.Fatalf("%s points at %q, want /dev/pts/N", env.link, tty)
	}
	t.Logf("%s → %s", env.link, tty)
	if _, err := env.g.Run(ctx, "readlink", AgentSocket(consolePlain)+".pty"); err == nil {
		t.Errorf("the plain port %s got a terminal too", consolePlain)
	}

	// A guest program opens the terminal through the symlink and
	// exchanges bytes with the host, byte-exact both ways (raw mode).
	const n, seedOut, seedIn = 48 << 10, 71, 72
	mark := env.tap.Len()
	proc, err := env.g.Start(ctx, "ptyxfer", env.link, strconv.Itoa(n), strconv.Itoa(seedOut))
	if err != nil {
		t.Fatal(err)
	}
	at, err := env.tap.waitFor(ctx, mark, wire.PTYReady)
	if err != nil {
		t.Fatalf("guest program on the terminal: %v", err)
	}
	got, err := env.tap.bytesAt(ctx, at, n)
	if err != nil {
		t.Fatalf("guest→host through the terminal: %v", err)
	}
	want := make([]byte, n)
	_, _ = io.ReadFull(wire.Pattern(seedOut), want)
	if !bytes.Equal(got, want) {
		i := 0
		for i < n && got[i] == want[i] {
			i++
		}
		t.Fatalf("guest→host through the terminal: %d bytes differ from byte %d on", n, i)
	}
	if err := writePattern(ctx, env.conn, n, seedIn); err != nil {
		t.Fatal(err)
	}
	out, err := proc.Wait(ctx)
	if err != nil {
		t.Fatalf("guest program on the terminal: %v", err)
	}
	sumIn, _ := patternSum(n, seedIn)
	if kv := ParseKV(out); kv["sha256"] != sumIn {
		t.Errorf("the guest program read sha256 %s from the terminal, the host wrote %s", kv["sha256"], sumIn)
	}
	if extra := env.tap.Len() - (at + n); extra != 0 {
		t.Errorf("%d unexpected bytes on the console after the exchange: %q", extra, env.tap.text(at+n))
	}
	t.Logf("terminal: %d bytes each way byte-exact between a guest program and the host", n)

	out, err = a.stop(ctx)
	if err != nil {
		t.Fatalf("vserial-agent after SIGTERM: %v\n%s", err, out)
	}
	if _, err := env.g.Run(ctx, "wait-gone", env.link, "10"); err != nil {
		t.Errorf("console symlink after the agent stopped: %v", err)
	}
}

// startConsoleExec starts the agent with --console-exec of minish and waits
// for its start line and the program's prompt on the console.
func startConsoleExec(t *testing.T, env *consoleEnv) *consoleExecEnv {
	ctx := caseCtx(t, 2*time.Minute)
	from := env.tap.Len()
	a := startConsoleAgent(ctx, t, env.g, "--console-exec", HelperPath+" minish", "--console-env", guestPATH)
	at, err := env.tap.waitFor(ctx, from, env.startLine)
	if err != nil {
		t.Fatalf("emergency-write start line: %v", err)
	}
	if _, err = env.tap.waitFor(ctx, at, wire.MinishPrompt); err != nil {
		t.Fatalf("the console program's prompt: %v", err)
	}
	tty := strings.TrimSpace(env.g.MustRun(t, "readlink", env.link))
	return &consoleExecEnv{consoleEnv: env, a: a, tty: tty}
}

// consoleExecTyping: the host types commands (tty, size, uname -r, pid) and
// reads their output through the cooked terminal; the program's stdin is
// the console's terminal and it leads its own session. It records the
// program's pid for the later cases.
func consoleExecTyping(t *testing.T, env *consoleExecEnv) {
	ctx := caseCtx(t, 2*time.Minute)
	out := env.typeLine(ctx, t, "tty")
	if want := fmt.Sprintf("tty=%s isatty=true\r\n", env.tty); out != want {
		t.Errorf("tty printed %q, want %q (the program's stdin is the console's terminal)", out, want)
	}
	out = env.typeLine(ctx, t, "size")
	t.Logf("size: %s (QEMU 7.2 sends no size, so the terminal keeps its own)", strings.TrimSpace(out))
	if out != "rows=0 cols=0\r\n" {
		t.Errorf("size printed %q, want rows=0 cols=0", out)
	}
	out = env.typeLine(ctx, t, "uname -r")
	if !strings.Contains(out, env.g.Kernel.Version+"\r\n") || !strings.Contains(out, "[exit 0]") {
		t.Errorf("uname -r printed %q, want %s and [exit 0]", out, env.g.Kernel.Version)
	}
	m := consolePIDRe.FindStringSubmatch(env.typeLine(ctx, t, "pid"))
	if m == nil || m[1] != m[2] {
		t.Fatalf("pid printed %q, want the program leading its own session", m)
	}
	env.pid = m[1]
	t.Logf("console program: pid %s on %s, driven from the host", env.pid, env.tty)
}

// consoleExecRestart: the program exits; the agent starts it again (after
// 1 s) on the same terminal, a new process. It updates env.pid.
func consoleExecRestart(t *testing.T, env *consoleExecEnv) {
	ctx := caseCtx(t, 2*time.Minute)
	start := env.tap.Len()
	if _, err := io.WriteString(env.conn, "exit 3\r"); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	at, err := env.tap.waitFor(ctx, start, "exit 3\r\n")
	if err != nil {
		t.Fatalf("typed exit: %v", err)
	}
	if _, err := env.tap.waitFor(ctx, at, wire.MinishPrompt); err != nil {
		t.Fatalf("no prompt after the console program exited: %v", err)
	}
	t.Logf("console program restarted: new prompt %v after it exited", time.Since(t0).Round(time.Millisecond))
	m := consolePIDRe.FindStringSubmatch(env.typeLine(ctx, t, "pid"))
	if m == nil || m[1] == env.pid {
		t.Errorf("after the restart pid printed %q, want a new process (was %s)", m, env.pid)
	}
	if _, err := env.g.Run(ctx, "readlink", env.link); err != nil {
		t.Errorf("console symlink after the restart: %v", err)
	}
	if m != nil {
		env.pid = m[1]
	}
}

// consoleExecHotplugConsole: a virtconsole hot-plugged while the agent runs
// gets its own terminal and program; unplugging it stops the program and
// removes the symlink; the same nr and name plugged again get a fresh
// terminal and program. Twice. Port 0's program is not disturbed.
func consoleExecHotplugConsole(t *testing.T, env *consoleExecEnv) {
	ctx := caseCtx(t, 3*time.Minute)
	const hot = "org.vserial.console.hot"
	hotLink := AgentSocket(hot + ".pty")
	for i := range 2 {
		if _, err := env.g.HotplugPort(ctx, Port{Console: true, Name: hot, Nr: 2}); err != nil {
			t.Fatal(err)
		}
		if err := env.g.WaitPath(ctx, hotLink, 30*time.Second); err != nil {
			t.Fatalf("hot-plugged console (plug %d): %v", i+1, err)
		}
		hconn := env.g.DialPort(t, hot)
		htap := tapConsole(hconn)
		// The first prompt may have been written before the host
		// attached (and dropped, as on any virtconsole): ask for it.
		if _, err := io.WriteString(hconn, "pid\r"); err != nil {
			t.Fatal(err)
		}
		sub, _, err := htap.waitMatch(ctx, 0, regexp.MustCompile(`pid=([0-9]+) sid=[0-9]+\r\n`))
		if err != nil {
			t.Fatalf("program on the hot-plugged console (plug %d): %v", i+1, err)
		}
		hpid := sub[1]
		htty := strings.TrimSpace(env.g.MustRun(t, "readlink", hotLink))
		if htty == env.tty {
			t.Errorf("the hot-plugged console shares the terminal %s of port 0", env.tty)
		}
		t.Logf("hot-plugged console (plug %d): program pid %s on %s", i+1, hpid, htty)
		if err := env.g.UnplugPort(ctx, hot); err != nil {
			t.Fatal(err)
		}
		hconn.Close()
		if _, err := env.g.Run(ctx, "wait-gone", hotLink, "30"); err != nil {
			t.Errorf("unplugged console: %v", err)
		}
		if _, err := env.g.Run(ctx, "wait-gone", "/proc/"+hpid, "30"); err != nil {
			t.Errorf("the program of the unplugged console still runs: %v", err)
		}
	}
	// Port 0's program was not disturbed.
	env.checkSameProgram(ctx, t, "port 0's program after the hot-plugs")
}

// consoleExecSocketClient: a client of the console's socket takes the port
// from the terminal while it is connected; then the terminal, and the same
// program, have it again. The client speaks first (pingpong: one byte out,
// the host echoes it), so the host knows when it has the port.
func consoleExecSocketClient(t *testing.T, env *consoleExecEnv) {
	ctx := caseCtx(t, 2*time.Minute)
	start := env.tap.Len()
	const rounds = 3
	pp, err := env.g.Start(ctx, "pingpong", AgentSocket(consoleName), strconv.Itoa(rounds))
	if err != nil {
		t.Fatal(err)
	}
	for i := range rounds {
		b, err := env.tap.bytesAt(ctx, start+i, 1)
		if err != nil {
			t.Fatalf("socket client on the console, round %d: %v", i, err)
		}
		if b[0] != byte(i) {
			t.Fatalf("socket client on the console, round %d: the host got %q, want %#x (console: %q)", i, b, i, env.tap.text(start))
		}
		if _, err := env.conn.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := pp.Wait(ctx); err != nil {
		t.Fatalf("socket client on the console: %v %s", err, out)
	}
	env.a.waitList(ctx, t, "the console's socket client gone", func(l agentList) bool {
		p, ok := l.byName(consoleName)
		return ok && !p.ClientConnected
	})
	// Nothing reached the terminal meanwhile (it would have echoed).
	if got := env.tap.text(start); got != "\x00\x01\x02" {
		t.Errorf("console while the socket client had it: %q, want just the client's 3 bytes", got)
	}
	env.checkSameProgram(ctx, t, "after the socket client left")
}

// consoleExecLastGasp: the function is taken away from the agent (its
// uio_pci_generic binding removed under it, as an operator might): the
// interrupt fd fails, the device stops, and the agent says why on the
// console through emergency write before it exits 1; the program ends
// with it.
func consoleExecLastGasp(t *testing.T, env *consoleExecEnv) {
	ctx := caseCtx(t, 2*time.Minute)
	start := env.tap.Len()
	env.g.MustRun(t, "write", "/sys/bus/pci/drivers/uio_pci_generic/unbind", env.addr)
	fatal := regexp.MustCompile(`vserial-agent: fatal: device ` + regexp.QuoteMeta(env.addr) + ` stopped: [^\n]+\n`)
	sub, at, err := env.tap.waitMatch(ctx, start, fatal)
	if err != nil {
		t.Fatalf("last-gasp line: %v", err)
	}
	t.Logf("host saw the last gasp %q", strings.TrimSpace(sub[0]))
	if _, err := env.tap.waitFor(ctx, at, "vserial-agent: fatal: every device stopped; exiting\n"); err != nil {
		t.Errorf("last-gasp exit line: %v", err)
	}
	env.a.stopd = true
	log, err := env.a.proc.Wait(ctx)
	var ee *ExitError
	if !errors.As(err, &ee) || ee.Code != 1 {
		t.Errorf("vserial-agent after losing its device: %v, want exit status 1\n%s", err, log)
	}
	if _, err := env.g.Run(ctx, "wait-gone", "/proc/"+env.pid, "10"); err != nil {
		t.Errorf("the console program outlived the agent: %v", err)
	}
}

// TestAgentConsoleSinglePort runs a program on the console of a device
// without MULTIPORT (max_ports=1): its one port is a console (no
// CONSOLE_PORT message exists there) and gets a terminal too, named after
// its fallback name; emergency write works on it as well.
func TestAgentConsoleSinglePort(t *testing.T) {
	t.Parallel()
	opts := Options{Ports: []Port{{Console: true}}, MaxPorts: 1}
	opts.Files = append(opts.Files, BuildAgent(t))
	g := Boot(t, opts)
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	conn := g.DialPort(t, "port0")
	tap := tapConsole(conn)
	addr := path.Base(findVirtioConsole(t, g))
	link := AgentSocket("vport0p0.pty")

	a := startConsoleAgent(ctx, t, g, "--console-exec", HelperPath+" minish", "--console-env", guestPATH)
	at, err := tap.waitFor(ctx, 0, "vserial-agent: starting on "+addr+"\n")
	if err != nil {
		t.Fatalf("emergency-write start line: %v", err)
	}
	if at, err = tap.waitFor(ctx, at, wire.MinishPrompt); err != nil {
		t.Fatalf("the console program's prompt: %v", err)
	}
	tty := strings.TrimSpace(g.MustRun(t, "readlink", link))
	if _, err := io.WriteString(conn, "tty\r"); err != nil {
		t.Fatal(err)
	}
	if _, err := tap.waitFor(ctx, at, fmt.Sprintf("tty=%s isatty=true\r\n", tty)); err != nil {
		t.Fatalf("the program on %s: %v", link, err)
	}
	if _, err := io.WriteString(conn, "pid\r"); err != nil {
		t.Fatal(err)
	}
	sub, _, err := tap.waitMatch(ctx, at, regexp.MustCompile(`pid=([0-9]+) sid=[0-9]+\r\n`))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("single-port console: program pid %s on %s (%s)", sub[1], tty, link)

	out, err := a.stop(ctx)
	if err != nil {
		t.Fatalf("vserial-agent after SIGTERM: %v, want exit 0\n%s", err, out)
	}
	for _, p := range []string{link, "/proc/" + sub[1]} {
		if _, err := g.Run(ctx, "wait-gone", p, "10"); err != nil {
			t.Errorf("after the agent stopped: %v", err)
		}
	}
}

// guestPATH is the console program's PATH in the test image: u-root keeps
// its commands in /bbin, which the agent's minimal environment for console
// programs (agent.MinimalEnv) does not name.
const guestPATH = "PATH=/bbin:/bin:/sbin:/usr/bin:/usr/sbin"
