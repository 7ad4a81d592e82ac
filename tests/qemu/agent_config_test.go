package qemu

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vserial/vserial/agent"
)

// TestAgentConfig runs vserial-agent with a --config file in one guest:
// a connect-mode port dialing a guest program that listens (and redialing
// after the program closes), an ignored port, a port whose socket lives
// elsewhere with its own owner, group and mode, and the default line's
// socket mode on the other ports.
func TestAgentConfig(t *testing.T) {
	t.Parallel()
	const (
		connectName = "org.vserial.connect"
		ignoredName = "org.vserial.ignored"
		customName  = "org.vserial.custom"
		plainName   = "org.vserial.plain"
		greetSock   = "/tmp/greet.sock"
		customSock  = "/tmp/custom.sock"
		confPath    = "/etc/vserial.conf"
	)
	conf := filepath.Join(t.TempDir(), "vserial.conf")
	text := fmt.Sprintf(`# test configuration
default socket-mode=0640
port %s mode=connect target=%s
port %s mode=ignore   # never opened towards the host
port %s socket=%s owner=1234 group=567 socket-mode=0600
`, connectName, greetSock, ignoredName, customName, customSock)
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	opts := Options{
		Ports:    []Port{{Name: connectName}, {Name: ignoredName}, {Name: customName}, {Name: plainName}},
		MaxPorts: 8,
		Files:    []File{{Dst: confPath, Src: conf, Mode: 0o644}},
	}
	a := bootAgentArgs(t, opts, []string{"--config", confPath}, plainName)
	g := a.g
	ctx, cancel := context.WithTimeout(t.Context(), 8*time.Minute)
	defer cancel()
	if err := g.WaitPath(ctx, customSock, 60*time.Second); err != nil {
		t.Fatalf("configured socket %s: %v", customSock, err)
	}

	t.Run("connect-mode", func(t *testing.T) {
		host := g.DialPort(t, connectName)
		l := a.waitList(ctx, t, "the connect port", func(l agentList) bool {
			p, ok := l.byName(connectName)
			return ok && p.Mode == agent.ModeConnect
		})
		if p, _ := l.byName(connectName); p.Target != greetSock || p.Socket != "" || p.ClientConnected {
			t.Errorf("before the program listens: %+v, want target %s, no socket, not connected", p, greetSock)
		}
		// The program starts after the agent: the agent has been redialing.
		proc, err := g.Start(ctx, "listen-greet", greetSock, "2")
		if err != nil {
			t.Fatal(err)
		}
		r := bufio.NewReader(host)
		host.SetDeadline(time.Now().Add(3 * time.Minute))
		for i := 1; i <= 2; i++ {
			line, err := r.ReadString('\n')
			if want := fmt.Sprintf("hello %d\n", i); line != want || err != nil {
				t.Fatalf("host read %q, %v; want %q (connection %d of the dialed program)", line, err, want, i)
			}
			if _, err := fmt.Fprintf(host, "ack %d\n", i); err != nil {
				t.Fatal(err)
			}
		}
		out, err := proc.Wait(ctx)
		if err != nil {
			t.Fatalf("listen-greet: %v\n%s", err, out)
		}
		if !strings.Contains(out, `read="ack 1"`) || !strings.Contains(out, `read="ack 2"`) {
			t.Errorf("the guest program did not get the host's replies:\n%s", out)
		}
		// The program is gone: the port is closed towards the host again.
		a.waitList(ctx, t, "the connect port without a connection", func(l agentList) bool {
			p, ok := l.byName(connectName)
			return ok && !p.ClientConnected
		})
	})

	t.Run("ignored-port", func(t *testing.T) {
		l := a.waitList(ctx, t, "the ignored port", func(l agentList) bool {
			p, ok := l.byName(ignoredName)
			return ok && p.Mode == agent.ModeIgnore
		})
		p, _ := l.byName(ignoredName)
		if p.Socket != "" || p.ClientConnected {
			t.Errorf("ignored port: %+v, want no socket and no client", p)
		}
		names, err := ls(ctx, g, AgentSocketDir)
		if err != nil {
			t.Fatal(err)
		}
		fallback := fmt.Sprintf("vport%dp%d", p.Device, p.ID)
		if slices.Contains(names, ignoredName) || slices.Contains(names, fallback) {
			t.Errorf("%s holds a socket for the ignored port: %v", AgentSocketDir, names)
		}
	})

	t.Run("socket-path-owner-mode", func(t *testing.T) {
		if got := strings.TrimSpace(g.MustRun(t, "stat", customSock)); got != "type=socket perm=0600 uid=1234 gid=567" {
			t.Errorf("stat %s: %s, want a socket, 0600, uid 1234, gid 567", customSock, got)
		}
		if got := strings.TrimSpace(g.MustRun(t, "stat", AgentSocket(plainName))); got != "type=socket perm=0640 uid=0 gid=0" {
			t.Errorf("stat %s: %s, want the default line's 0640, owned by root", AgentSocket(plainName), got)
		}
		l, _, err := a.list(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if p, ok := l.byName(customName); !ok || p.Socket != customSock || p.Mode != agent.ModeListen {
			t.Errorf("list: %+v, want socket %s", p, customSock)
		}
		conn := g.DialPort(t, customName)
		if err := both(ctx, t, g, conn, customSock, 256<<10, 31); err != nil {
			t.Fatal(err)
		}
	})
}
