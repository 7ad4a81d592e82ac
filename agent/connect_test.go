package agent_test

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vserial/vserial/agent"
	"github.com/vserial/vserial/agent/agenttest"
)

// listenTarget creates the Unix socket a connect port dials.
func listenTarget(t *testing.T, path string) *net.UnixListener {
	t.Helper()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// acceptAgent waits for the agent to dial ln.
func acceptAgent(t *testing.T, ln *net.UnixListener) *net.UnixConn {
	t.Helper()
	ln.SetDeadline(time.Now().Add(patience))
	c, err := ln.AcceptUnix()
	if err != nil {
		t.Fatalf("waiting for the agent to dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func connectConfig(target string) agent.Config {
	return agent.Config{
		Ports:     map[string]agent.PortConfig{"qga": {Mode: agent.ModeConnect, Target: target}},
		RedialMin: time.Millisecond,
		RedialMax: 20 * time.Millisecond,
	}
}

func TestConnectModeDialsAndRedials(t *testing.T) {
	target := filepath.Join(shortTempDir(t), "qga.sock")
	a := newAgent(t, connectConfig(target))
	p := agenttest.NewPort(1, "qga")
	p.SetHostConnected(true)
	addPort(t, a, 0, p)

	// Nobody listens yet: the agent keeps redialing, the port stays closed
	// for the host and no socket is published for it.
	st := waitStatus(t, a, "connect mode in status", func(s []agent.PortStatus) bool {
		return len(s) == 1 && s[0].Mode == agent.ModeConnect
	})
	if st[0].Target != target || st[0].Socket != "" || st[0].ClientConnected {
		t.Errorf("status before the target exists: %+v", st[0])
	}
	if ents, _ := os.ReadDir(a.Dir()); len(ents) != 0 {
		t.Errorf("socket dir holds %v, want nothing for a connect port", ents)
	}
	if s := p.State(); len(s.Opens) != 0 {
		t.Errorf("PORT_OPEN sent with no connection: %v", s.Opens)
	}

	ln := listenTarget(t, target)
	c := acceptAgent(t, ln)
	waitPort(t, p, "PORT_OPEN 1 on the dialed connection", func(s agenttest.State) bool { return s.GuestOpen })
	waitStatus(t, a, "client connected", func(s []agent.PortStatus) bool { return s[0].ClientConnected })

	// Bytes both ways.
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	waitPort(t, p, "guest→host bytes", func(s agenttest.State) bool { return string(s.Sent) == "ping" })
	p.Deliver([]byte("pong"))
	c.SetReadDeadline(time.Now().Add(patience))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "pong" {
		t.Fatalf("host→guest: %q, %v", buf, err)
	}

	// The program closes: the port closes for the host, and the agent
	// dials again.
	c.Close()
	waitPort(t, p, "PORT_OPEN 0 after the connection ended", func(s agenttest.State) bool {
		return opensEqual(s.Opens, true, false)
	})
	c2 := acceptAgent(t, ln)
	waitPort(t, p, "PORT_OPEN 1 on the redialed connection", func(s agenttest.State) bool {
		return opensEqual(s.Opens, true, false, true)
	})
	if _, err := c2.Write([]byte("again")); err != nil {
		t.Fatal(err)
	}
	waitPort(t, p, "bytes on the second connection", func(s agenttest.State) bool { return string(s.Sent) == "pingagain" })

	// The listener goes away entirely: the agent keeps trying and
	// connects when a new one appears at the same path.
	ln.Close()
	c2.Close()
	os.Remove(target)
	waitPort(t, p, "PORT_OPEN 0", func(s agenttest.State) bool { return !s.GuestOpen && len(s.Opens) == 4 })
	ln2 := listenTarget(t, target)
	acceptAgent(t, ln2)
	waitPort(t, p, "PORT_OPEN 1 after the listener came back", func(s agenttest.State) bool { return len(s.Opens) == 5 && s.GuestOpen })
}

func TestConnectModeBackpressure(t *testing.T) {
	target := filepath.Join(shortTempDir(t), "t.sock")
	ln := listenTarget(t, target)
	a := newAgent(t, connectConfig(target))
	p := agenttest.NewPort(1, "qga")
	addPort(t, a, 0, p)
	c := acceptAgent(t, ln)
	waitPort(t, p, "PORT_OPEN 1", func(s agenttest.State) bool { return s.GuestOpen })

	// The host is away: the program's bytes must stay in its socket, so
	// its writes stop once the socket buffers are full.
	payload := bytes.Repeat([]byte("0123456789abcdef"), 1<<19) // 8 MiB
	c.SetWriteDeadline(time.Now().Add(300 * time.Millisecond))
	n, err := c.Write(payload)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("program wrote %d of %d bytes with the host disconnected (err %v): the agent is reading", n, len(payload), err)
	}
	if s := p.State(); len(s.Sent) != 0 || s.SendBytesHostDown != 0 {
		t.Fatalf("agent took %d bytes while the host was away", len(s.Sent))
	}
	p.SetHostConnected(true)
	c.SetWriteDeadline(time.Time{})
	if _, err := c.Write(payload[n:]); err != nil {
		t.Fatal(err)
	}
	s := waitPort(t, p, "every byte after the host connected", func(s agenttest.State) bool { return len(s.Sent) == len(payload) })
	if !bytes.Equal(s.Sent, payload) || s.SendBytesHostDown != 0 {
		t.Errorf("bytes altered, or %d sent while the host was away", s.SendBytesHostDown)
	}
}

func TestLateNameSwitchesToConnect(t *testing.T) {
	target := filepath.Join(shortTempDir(t), "t.sock")
	ln := listenTarget(t, target)
	a := newAgent(t, connectConfig(target))
	p := agenttest.NewPort(1, "")
	addPort(t, a, 0, p)
	vport := filepath.Join(a.Dir(), "vport0p1")
	if !exists(vport) {
		t.Fatalf("%s missing before the name arrived", vport)
	}
	p.SetName("qga")
	acceptAgent(t, ln)
	waitPort(t, p, "PORT_OPEN 1", func(s agenttest.State) bool { return s.GuestOpen })
	if exists(vport) {
		t.Errorf("%s still exists after the port switched to connect mode", vport)
	}
}

func TestIgnoredPort(t *testing.T) {
	a := newAgent(t, agent.Config{Ports: map[string]agent.PortConfig{"skip": {Mode: agent.ModeIgnore}}})
	skip := agenttest.NewPort(1, "skip")
	skip.SetHostConnected(true)
	addPort(t, a, 0, skip)
	other := agenttest.NewPort(2, "other")
	addPort(t, a, 0, other)
	st := a.Status()
	if len(st) != 2 || st[0].Mode != agent.ModeIgnore || st[0].Socket != "" || st[1].Mode != agent.ModeListen {
		t.Fatalf("status = %+v", st)
	}
	if exists(filepath.Join(a.Dir(), "skip")) || exists(filepath.Join(a.Dir(), "vport0p1")) {
		t.Error("an ignored port has a socket")
	}
	connectClient(t, other, filepath.Join(a.Dir(), "other"))
	if s := skip.State(); len(s.Opens) != 0 {
		t.Errorf("ignored port was opened towards the host: %v", s.Opens)
	}
}

func TestDefaultIgnoreWithAllowList(t *testing.T) {
	a := newAgent(t, agent.Config{
		Default: agent.PortConfig{Mode: agent.ModeIgnore},
		Ports:   map[string]agent.PortConfig{"wanted": {}},
	})
	addPort(t, a, 0, agenttest.NewPort(1, "unwanted"))
	w := agenttest.NewPort(2, "")
	addPort(t, a, 0, w)
	if ents, _ := os.ReadDir(a.Dir()); len(ents) != 0 {
		t.Errorf("socket dir holds %v, want nothing yet", ents)
	}
	w.SetName("wanted")
	waitStatus(t, a, "wanted published", func(s []agent.PortStatus) bool {
		return len(s) == 2 && s[1].Socket == filepath.Join(a.Dir(), "wanted")
	})
}

func TestConfiguredSocketPathOwnerMode(t *testing.T) {
	elsewhere := shortTempDir(t)
	path := filepath.Join(elsewhere, "log.sock")
	staleSocket(t, path) // left by an earlier run: replaced
	uid, gid := os.Getuid(), os.Getgid()
	a := newAgent(t, agent.Config{Ports: map[string]agent.PortConfig{
		"log":   {Socket: path, SocketMode: 0o600, Owner: &uid, Group: &gid},
		"short": {Socket: "s"},
	}})
	p := agenttest.NewPort(1, "log")
	addPort(t, a, 0, p)
	addPort(t, a, 0, agenttest.NewPort(2, "short"))
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Errorf("%s: mode %v, want socket 0600", path, fi.Mode())
	}
	st := a.Status()
	if st[0].Socket != path || st[1].Socket != filepath.Join(a.Dir(), "s") {
		t.Errorf("status = %+v", st)
	}
	connectClient(t, p, path)
	a.Close()
	if exists(path) {
		t.Errorf("%s left behind after Close", path)
	}
}

func TestBadPortConfigRefused(t *testing.T) {
	for _, pc := range []agent.PortConfig{
		{Mode: "bogus"},
		{Mode: agent.ModeConnect},
		{Mode: agent.ModeConnect, Target: "relative.sock"},
		{Mode: agent.ModeConnect, Target: "/t", Socket: "x"},
		{Mode: agent.ModeIgnore, SocketMode: 0o600},
		{Target: "/t"},
		{Socket: "a/b"},
		{SocketMode: 0o4777},
	} {
		_, err := agent.New(agent.Config{SocketDir: filepath.Join(shortTempDir(t), "run"), Ports: map[string]agent.PortConfig{"p": pc}})
		if err == nil || !strings.Contains(err.Error(), `port "p"`) {
			t.Errorf("config %+v: err %v, want an error naming the port", pc, err)
		}
	}
	_, err := agent.New(agent.Config{SocketDir: filepath.Join(shortTempDir(t), "run"), Default: agent.PortConfig{Mode: agent.ModeConnect, Target: "/t"}})
	if err == nil {
		t.Error("default connect mode accepted")
	}
}
