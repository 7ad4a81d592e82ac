package main

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vserial/vserial/agent"
	"github.com/vserial/vserial/agent/agenttest"
)

// notifyListener is the supervisor's end of $NOTIFY_SOCKET.
type notifyListener struct {
	t *testing.T
	c *net.UnixConn
}

func listenNotify(t *testing.T) (*notifyListener, string) {
	t.Helper()
	path := filepath.Join(shortTempDir(t), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &notifyListener{t, c}, path
}

// next returns the next message's assignments, failing the test if none
// arrives within patience.
func (l *notifyListener) next() map[string]string {
	l.t.Helper()
	buf := make([]byte, 4096)
	l.c.SetReadDeadline(time.Now().Add(patience))
	n, err := l.c.Read(buf)
	if err != nil {
		l.t.Fatalf("no notification: %v", err)
	}
	return parseNotify(l.t, string(buf[:n]))
}

// none checks that no message is waiting (a short look: the agent sends
// synchronously from its run loop, so a wrong early READY would be there).
func (l *notifyListener) none(what string) {
	l.t.Helper()
	l.c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	buf := make([]byte, 4096)
	n, err := l.c.Read(buf)
	if err == nil {
		l.t.Fatalf("%s: unexpected notification %q", what, buf[:n])
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		l.t.Fatal(err)
	}
}

func parseNotify(t *testing.T, msg string) map[string]string {
	t.Helper()
	kv := map[string]string{}
	for _, line := range strings.Split(msg, "\n") {
		k, v, ok := strings.Cut(line, "=")
		if !ok || k == "" {
			t.Fatalf("notification line %q is not VAR=VALUE (message %q)", line, msg)
		}
		kv[k] = v
	}
	return kv
}

func TestRunNotifiesReadyAfterPortsArePublished(t *testing.T) {
	l, path := listenNotify(t)
	t.Setenv(notifyEnv, path)
	sys := shortTempDir(t)
	fakeFunction(t, sys, "0000:00:03.0", "0x1af4", "0x1043", "0x1100", "")
	fakeFunction(t, sys, "0000:00:04.0", "0x1af4", "0x1043", "0x1100", "")
	p1 := agenttest.NewPort(1, "org.example.one")
	p2 := agenttest.NewPort(2, "")
	p3 := agenttest.NewPort(1, "org.example.three")
	h := startRunPresent(t, sys, nil, nil, [][]agent.Port{{p1, p2}, {p3}})

	kv := l.next()
	for _, s := range []string{"org.example.one", "vport0p2", "org.example.three"} {
		if _, err := os.Lstat(filepath.Join(h.dir, s)); err != nil {
			t.Errorf("READY=1 arrived before socket %s was published: %v", s, err)
		}
	}
	if kv["READY"] != "1" {
		t.Errorf("first notification %v, want READY=1", kv)
	}
	if !strings.Contains(kv["STATUS"], "3 ports of 2 devices") {
		t.Errorf("STATUS=%q does not say 3 ports of 2 devices", kv["STATUS"])
	}
	if _, ok := os.LookupEnv(notifyEnv); ok {
		t.Errorf("$%s still set in the agent's environment: children would inherit it", notifyEnv)
	}

	// The devices deliver their start ports on Ports as well (the driver
	// reports every port there); those are not published twice. A port
	// hot-plugged later is published and changes nothing for readiness.
	d0, d1 := h.device(0), h.device(1)
	d0.ports <- p1
	d0.ports <- p2
	d1.ports <- p3
	d1.ports <- agenttest.NewPort(2, "org.example.late")
	waitFile(t, filepath.Join(h.dir, "org.example.late"))
	l.none("a hot-plugged port")
	if strings.Contains(h.logs.String(), "cannot publish port") {
		t.Errorf("a start port delivered again on Ports was published twice:\n%s", h.logs.String())
	}

	h.cancel() // SIGTERM
	kv = l.next()
	if kv["STOPPING"] != "1" {
		t.Errorf("notification at shutdown %v, want STOPPING=1", kv)
	}
	if code := h.wait(); code != exitOK {
		t.Fatalf("exit %d", code)
	}
}

// TestRunNameClashGoesToLowerDevice: at start, ports are published in
// device order, so of two start ports with one name the lower device index
// keeps it whatever the timing.
func TestRunNameClashGoesToLowerDevice(t *testing.T) {
	sys := shortTempDir(t)
	fakeFunction(t, sys, "0000:00:03.0", "0x1af4", "0x1043", "0x1100", "")
	fakeFunction(t, sys, "0000:00:04.0", "0x1af4", "0x1043", "0x1100", "")
	a0 := agenttest.NewPort(3, "org.example.same")
	a1 := agenttest.NewPort(1, "org.example.same")
	h := startRunPresent(t, sys, nil, nil, [][]agent.Port{{a0}, {a1}})
	waitFile(t, filepath.Join(h.dir, "vport1p1"))
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	st, err := agent.QueryStatus(ctx, h.dir)
	if err != nil || len(st) != 2 {
		t.Fatalf("status %+v, %v", st, err)
	}
	if st[0].Device != 0 || st[0].Socket != filepath.Join(h.dir, "org.example.same") || st[0].NameProblem != "" {
		t.Errorf("device 0's port %+v, want it on the name", st[0])
	}
	if st[1].Device != 1 || st[1].Socket != filepath.Join(h.dir, "vport1p1") || !strings.Contains(st[1].NameProblem, "device 0 port 3") {
		t.Errorf("device 1's port %+v, want it on vport1p1 with the clash reported over the control socket", st[1])
	}
	h.cancel()
	h.wait()
}

func TestRunNotifiesReadyWithNoPorts(t *testing.T) {
	l, path := listenNotify(t)
	t.Setenv(notifyEnv, path)
	sys := shortTempDir(t)
	fakeFunction(t, sys, "0000:00:03.0", "0x1af4", "0x1043", "0x1100", "")
	h := startRun(t, sys, nil, nil)
	if kv := l.next(); kv["READY"] != "1" {
		t.Errorf("notification %v, want READY=1 (a device without ports is ready at once)", kv)
	}
	h.cancel()
	if kv := l.next(); kv["STOPPING"] != "1" {
		t.Errorf("notification %v, want STOPPING=1", kv)
	}
	h.wait()
}

func TestRunNotifiesFailure(t *testing.T) {
	l, path := listenNotify(t)
	t.Setenv(notifyEnv, path)
	sys := shortTempDir(t)
	os.MkdirAll(filepath.Join(sys, "bus", "pci", "devices"), 0o755)
	h := startRun(t, sys, nil, nil)
	if code := h.wait(); code != exitFailure {
		t.Fatalf("exit %d, want %d", code, exitFailure)
	}
	kv := l.next()
	if _, ok := kv["READY"]; ok || !strings.Contains(kv["STATUS"], "no virtio-console function") {
		t.Errorf("notification %v, want a STATUS with the reason and no READY", kv)
	}
}

func TestNotifierEnvironment(t *testing.T) {
	for _, c := range []struct {
		val     string
		set     bool
		enabled bool
		err     string
	}{
		{set: false},
		{val: "", set: true, err: "empty"},
		{val: "run/notify", set: true, err: "absolute path"},
		{val: "/run/systemd/notify", set: true, enabled: true},
		{val: "@vserial-test", set: true, enabled: true},
		{val: "/" + strings.Repeat("x", 200), set: true, err: "longer"},
	} {
		if c.set {
			t.Setenv(notifyEnv, c.val)
		} else {
			os.Unsetenv(notifyEnv)
		}
		n, err := newNotifier()
		if c.err == "" && err != nil || c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)) {
			t.Errorf("%q: error %v, want one saying %q", c.val, err, c.err)
		}
		if n.enabled() != c.enabled {
			t.Errorf("%q: enabled %v, want %v", c.val, n.enabled(), c.enabled)
		}
		if _, ok := os.LookupEnv(notifyEnv); ok {
			t.Errorf("%q: variable left in the environment", c.val)
		}
	}
}

func TestNotifierAbstractSocket(t *testing.T) {
	name := "@vserial-notify-test-" + filepath.Base(t.TempDir())
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	t.Setenv(notifyEnv, name)
	n, err := newNotifier()
	if err != nil {
		t.Fatal(err)
	}
	if err := n.send("READY=1", "STATUS=two\nlines"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 256)
	c.SetReadDeadline(time.Now().Add(patience))
	k, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(buf[:k]); got != "READY=1\nSTATUS=two lines" {
		t.Errorf("sent %q", got)
	}
}
