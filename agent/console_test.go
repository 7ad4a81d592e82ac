package agent_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vserial/vserial/agent"
	"github.com/vserial/vserial/agent/agenttest"
)

// consolePort is a console port with the host connected, as QEMU presents
// a virtconsole with a chardev.
func consolePort(id uint32, name string) *agenttest.Port {
	p := agenttest.NewPort(id, name)
	p.SetHostConnected(true)
	p.SetConsole()
	return p
}

// waitLink waits for the console symlink and returns the pty it points to.
func waitLink(t *testing.T, link string) string {
	t.Helper()
	deadline := time.Now().Add(patience)
	for {
		if tty, err := os.Readlink(link); err == nil {
			if !strings.HasPrefix(tty, "/dev/pts/") {
				t.Fatalf("%s → %s, want /dev/pts/N", link, tty)
			}
			return tty
		}
		if time.Now().After(deadline) {
			t.Fatalf("no console symlink %s", link)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// waitSent waits until the host got output matching re (a line of output,
// not the terminal's echo of the command that prints it).
func waitSent(t *testing.T, p *agenttest.Port, re string) []string {
	t.Helper()
	rx := regexp.MustCompile(re)
	var m []string
	waitPort(t, p, "host output "+re, func(s agenttest.State) bool {
		m = rx.FindStringSubmatch(string(s.Sent))
		return m != nil
	})
	return m
}

func winsize(t *testing.T, tty string) (cols, rows uint16) {
	t.Helper()
	fd, err := unix.Open(tty, unix.O_RDONLY|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	ws, err := unix.IoctlGetWinsize(fd, unix.TIOCGWINSZ)
	if err != nil {
		t.Fatal(err)
	}
	return ws.Col, ws.Row
}

// A shell on the console: it has the pty as controlling terminal, runs what
// the host types, gets SIGWINCH on RESIZE, is restarted when it exits and
// killed when the agent closes.
func TestConsoleProgram(t *testing.T) {
	var mu sync.Mutex
	var resizes []agent.ConsoleResize
	a := newAgent(t, agent.Config{Console: agent.ConsoleConfig{
		Exec:       []string{"/bin/sh"},
		Env:        []string{"PATH=/usr/bin:/bin", "TERM=dumb", "PS1=$ "},
		RestartMin: 10 * time.Millisecond, RestartMax: 20 * time.Millisecond,
		OnResize: func(r agent.ConsoleResize) {
			mu.Lock()
			resizes = append(resizes, r)
			mu.Unlock()
		},
	}})
	p := consolePort(0, "con")
	addPort(t, a, 0, p)
	link := filepath.Join(a.Dir(), "con"+agent.PTYSuffix)
	tty := waitLink(t, link)
	if !exists(filepath.Join(a.Dir(), "con")) {
		t.Error("console port has no socket next to its terminal")
	}

	// $((...)) is expanded by the shell: the echo of the typed line does not
	// match.
	p.Deliver([]byte("echo hello-$((6*7))\n"))
	waitSent(t, p, `hello-42\r\n`)
	p.Deliver([]byte("[ -t 0 ] && (: </dev/tty) && echo ctty-ok-$((1+1)) $(tty)\n"))
	waitSent(t, p, `ctty-ok-2 `+regexp.QuoteMeta(tty))

	// SIGWINCH reaches the foreground job; TIOCGWINSZ has the new size.
	p.Deliver([]byte("sh -c 'trap \"echo got-winch-\\$((3*3)); exit\" WINCH; echo ready-$((2*2)); while :; do sleep 0.01; done'\n"))
	waitSent(t, p, `ready-4\r\n`)
	p.SetSize(132, 43)
	waitSent(t, p, `got-winch-9\r\n`)
	if c, r := winsize(t, tty); c != 132 || r != 43 {
		t.Errorf("TIOCGWINSZ %dx%d, want 132x43", c, r)
	}
	mu.Lock()
	if len(resizes) != 1 || resizes[0] != (agent.ConsoleResize{Device: 0, ID: 0, Name: "con", PTY: tty, Cols: 132, Rows: 43}) {
		t.Errorf("OnResize calls %+v", resizes)
	}
	mu.Unlock()

	// The shell exits; another one starts on the same terminal.
	p.Deliver([]byte("echo pid-$$-$((5+5)); exit\n"))
	first := waitSent(t, p, `pid-(\d+)-10\r\n`)[1]
	p.Deliver([]byte("echo pid-$$-$((5+6))\n"))
	second := waitSent(t, p, `pid-(\d+)-11\r\n`)[1]
	if first == second {
		t.Fatalf("same shell pid %s after exit", first)
	}
	pid, _ := strconv.Atoi(second)

	a.Close()
	if err := unix.Kill(pid, 0); !errors.Is(err, unix.ESRCH) {
		t.Errorf("shell %d still there after Close: %v", pid, err)
	}
	if exists(link) {
		t.Error("console symlink left after Close")
	}
	for _, o := range p.State().Opens {
		if !o {
			t.Errorf("port opens %v: a console stays open, the terminal never closes it", p.State().Opens)
		}
	}
}

// A socket client takes the port from the terminal while it is connected;
// then the terminal has it again. Nothing moves through the terminal
// meanwhile, and the port is never closed towards the host.
func TestConsoleSocketClientTakesOver(t *testing.T) {
	a := newAgent(t, agent.Config{Console: agent.ConsoleConfig{PTY: true}})
	p := consolePort(3, "")
	addPort(t, a, 1, p)
	link := filepath.Join(a.Dir(), "vport1p3"+agent.PTYSuffix)
	waitLink(t, link)
	slave, err := os.OpenFile(link, os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer slave.Close()
	readLine := func(want string) {
		t.Helper()
		slave.SetReadDeadline(time.Now().Add(patience))
		b := make([]byte, 256)
		n, err := slave.Read(b) // canonical mode: one line
		if err != nil || string(b[:n]) != want {
			t.Fatalf("terminal read %q, %v; want %q", b[:n], err, want)
		}
	}
	p.Deliver([]byte("abc\n"))
	readLine("abc\n")
	if _, err := slave.Write([]byte("out\n")); err != nil {
		t.Fatal(err)
	}
	waitSent(t, p, `out\r\n`)

	// The session opens the port (a no-op for a console) once the terminal
	// let go of it: connectClient waits for that.
	c := connectClient(t, p, filepath.Join(a.Dir(), "vport1p3"))
	p.Deliver([]byte("to-client"))
	c.SetReadDeadline(time.Now().Add(patience))
	b := make([]byte, 64)
	n, err := c.Read(b)
	if err != nil || string(b[:n]) != "to-client" {
		t.Fatalf("client read %q, %v", b[:n], err)
	}
	// The program's output waits in the terminal while the client is on.
	before := len(p.State().Sent)
	slave.Write([]byte("later\n"))
	c.Write([]byte("from-client"))
	waitSent(t, p, `from-client`)
	if bytes.Contains(p.State().Sent[before:], []byte("later")) {
		t.Error("terminal output went to the host while a socket client had the port")
	}
	c.Close()
	waitSent(t, p, `later\r\n`)
	p.Deliver([]byte("back\n"))
	readLine("back\n")
	for _, o := range p.State().Opens {
		if !o {
			t.Errorf("opens %v: the console must stay open, with or without a client", p.State().Opens)
		}
	}
}

// The symlink follows a name that arrives late; a stale one from an earlier
// agent is removed; a port that is not a console gets none.
func TestConsoleLinkNaming(t *testing.T) {
	dir := filepath.Join(shortTempDir(t), "run")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(dir, "old"+agent.PTYSuffix)
	if err := os.Symlink("/dev/pts/999", stale); err != nil {
		t.Fatal(err)
	}
	a := newAgent(t, agent.Config{SocketDir: dir, Console: agent.ConsoleConfig{PTY: true}})
	if exists(stale) {
		t.Error("stale console symlink kept")
	}
	plain := agenttest.NewPort(2, "plain")
	addPort(t, a, 0, plain)
	p := consolePort(0, "")
	addPort(t, a, 0, p)
	tty := waitLink(t, filepath.Join(dir, "vport0p0"+agent.PTYSuffix))
	p.SetName("console0")
	if got := waitLink(t, filepath.Join(dir, "console0"+agent.PTYSuffix)); got != tty {
		t.Errorf("renamed link → %s, want %s", got, tty)
	}
	waitStatus(t, a, "old link gone", func([]agent.PortStatus) bool { return !exists(filepath.Join(dir, "vport0p0"+agent.PTYSuffix)) })
	if exists(filepath.Join(dir, "plain"+agent.PTYSuffix)) {
		t.Error("a port that is not a console got a terminal")
	}
	p.Remove()
	waitStatus(t, a, "link removed with the port", func([]agent.PortStatus) bool { return !exists(filepath.Join(dir, "console0"+agent.PTYSuffix)) })
}

func TestConsoleConfigChecked(t *testing.T) {
	for _, c := range []agent.ConsoleConfig{
		{Exec: []string{"sh"}},
		{Exec: []string{""}},
		{Exec: []string{"/nonexistent/prog"}},
		{Exec: []string{"/"}},
		{PTY: true, RestartMin: time.Second, RestartMax: time.Millisecond},
	} {
		if _, err := agent.New(agent.Config{SocketDir: filepath.Join(shortTempDir(t), "run"), Console: c}); err == nil {
			t.Errorf("New accepted console config %+v", c)
		}
	}
}

// Mode pty (per-port configuration) gives any port a terminal, console or
// not, with the port opened towards the host by the terminal; a console in
// mode ignore gets none.
func TestConsoleModePTY(t *testing.T) {
	a := newAgent(t, agent.Config{
		Ports: map[string]agent.PortConfig{"tty0": {Mode: agent.ModePTY}, "con": {Mode: agent.ModeIgnore}},
		// Consoles get a terminal by default, but not the ignored one.
		Console: agent.ConsoleConfig{PTY: true},
	})
	p := agenttest.NewPort(1, "tty0")
	p.SetHostConnected(true)
	addPort(t, a, 0, p)
	waitLink(t, filepath.Join(a.Dir(), "tty0"+agent.PTYSuffix))
	waitPort(t, p, "opened by the terminal", func(s agenttest.State) bool { return s.GuestOpen })
	slave, err := os.OpenFile(filepath.Join(a.Dir(), "tty0"+agent.PTYSuffix), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer slave.Close()
	slave.Write([]byte("hi\n"))
	waitSent(t, p, `hi\r\n`)

	ign := consolePort(0, "con")
	addPort(t, a, 0, ign)
	waitStatus(t, a, "both ports", func(st []agent.PortStatus) bool { return len(st) == 2 })
	plain := consolePort(2, "plain-console")
	addPort(t, a, 0, plain)
	waitLink(t, filepath.Join(a.Dir(), "plain-console"+agent.PTYSuffix))
	if exists(filepath.Join(a.Dir(), "con"+agent.PTYSuffix)) {
		t.Error("an ignored console got a terminal")
	}
}

// The device decides how many consoles it has; each gets a terminal (and a
// program) only up to the cap per device, whichever are set up first. The
// one over the cap is a plain socket until a console with a terminal goes
// away.
func TestConsoleCapPerDevice(t *testing.T) {
	a := newAgent(t, agent.Config{Console: agent.ConsoleConfig{PTY: true, MaxPerDevice: 2}})
	names := []string{"c0", "c1", "c2"}
	ps := map[string]*agenttest.Port{}
	for i, n := range names {
		ps[n] = consolePort(uint32(i), n)
		addPort(t, a, 0, ps[n])
	}
	other := consolePort(0, "d1c0")
	addPort(t, a, 1, other)
	link := func(name string) string { return filepath.Join(a.Dir(), name+agent.PTYSuffix) }
	waitLink(t, link("d1c0")) // another device has a cap of its own
	var with, without []string
	deadline := time.Now().Add(patience)
	for {
		with, without = nil, nil
		for _, n := range names {
			if exists(link(n)) {
				with = append(with, n)
			} else {
				without = append(without, n)
			}
		}
		if len(with) >= 2 || time.Now().After(deadline) {
			break
		}
		time.Sleep(2 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	if exists(link(without[0])) || len(with) != 2 {
		t.Fatalf("consoles of one device with a terminal: %v, want 2 (the cap)", with)
	}
	if !exists(filepath.Join(a.Dir(), without[0])) {
		t.Fatal("the console over the cap has no socket")
	}
	ps[with[0]].Remove()
	waitLink(t, link(without[0]))
}

// A console program gets a minimal environment, not the agent's.
func TestConsoleProgramMinimalEnv(t *testing.T) {
	t.Setenv("VSERIAL_TEST_SECRET", "leaked")
	a := newAgent(t, agent.Config{Console: agent.ConsoleConfig{Exec: []string{"/bin/sh"}}})
	p := consolePort(0, "con")
	addPort(t, a, 0, p)
	waitLink(t, filepath.Join(a.Dir(), "con"+agent.PTYSuffix))
	p.Deliver([]byte("echo env-[$VSERIAL_TEST_SECRET]-$((2+3))-$TERM-$HOME-$(env | wc -l)\n"))
	m := waitSent(t, p, `env-\[(.*)\]-5-(\S*)-(\S*)-\s*(\d+)\r\n`)
	if m[1] != "" || m[2] != "vt220" || m[3] != "/" {
		t.Errorf("console program environment: secret %q TERM %q HOME %q; want none, vt220, /", m[1], m[2], m[3])
	}
	if n, _ := strconv.Atoi(m[4]); n > len(agent.MinimalEnv)+4 {
		t.Errorf("console program sees %d variables, want about the %d of MinimalEnv", n, len(agent.MinimalEnv))
	}
}
