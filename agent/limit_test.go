package agent_test

import (
	"bufio"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vserial/vserial/agent"
	"github.com/vserial/vserial/agent/agenttest"
)

// Regression test: an accept error (EMFILE) ended ServeControl for good,
// leaving .control accepting into its backlog with nobody answering.
func TestControlAcceptErrorBacksOff(t *testing.T) {
	a := newAgent(t, agent.Config{})
	l := newFakeListener()
	const errs = 4
	for range errs {
		l.script <- func() (net.Conn, error) {
			return nil, &net.OpError{Op: "accept", Net: "unix", Err: syscall.EMFILE}
		}
	}
	serveOn(t, a, l)
	c := l.pipeConn()
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(`{"op":"status"}` + "\n")); err != nil {
		t.Fatalf("status request after %d accept errors: %v", errs, err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || !strings.Contains(line, `"running":true`) {
		t.Fatalf("status answer after %d accept errors: %q, %v", errs, line, err)
	}
	l.mu.Lock()
	calls := append([]time.Time(nil), l.calls...)
	l.mu.Unlock()
	// The waits double from 5 ms: 5, 10, 20, 40.
	want := 5 * time.Millisecond
	for i := 1; i <= errs; i++ {
		if got := calls[i].Sub(calls[i-1]); got < want {
			t.Errorf("wait after accept error %d: %v, want at least %v", i, got, want)
		}
		want *= 2
	}
}

// Regression test: control connections had no bound, so anyone who could
// open .control could hold them all (10 s each) and run the agent out of
// descriptors.
func TestControlConnectionCap(t *testing.T) {
	a := newAgent(t, agent.Config{})
	setUID := uidSeam(a)
	serveControl(t, a)

	idleConns(t, a, 1000, agent.MaxControlConnsPerUID)
	c := dialAs(t, a, 1000)
	if line := readRefusal(t, c); !strings.Contains(line, "too many control connections") {
		t.Fatalf("connection %d of one uid: %q, want a refusal", agent.MaxControlConnsPerUID+1, line)
	}
	// Another user is still served.
	setUID(1001)
	if _, err := agent.QueryStatus(waitCtx(t), a.Dir()); err != nil {
		t.Fatalf("status from another uid while one uid holds its slots: %v", err)
	}
	// Every slot taken, by several users: the next one is refused too.
	for u := 1; u < agent.MaxControlConns/agent.MaxControlConnsPerUID; u++ {
		idleConns(t, a, uint32(1000+u), agent.MaxControlConnsPerUID)
	}
	c2 := dialAs(t, a, 3000)
	if line := readRefusal(t, c2); !strings.Contains(line, "too many control connections") {
		t.Fatalf("connection beyond %d in all: %q, want a refusal", agent.MaxControlConns, line)
	}
	if n := agent.Refused(a); n != 2 {
		t.Errorf("refused connections counted: %d, want 2", n)
	}
}

// Regression test: event streams were bounded only in total, so one user's
// idle subscribers could take every slot.
func TestEventsSubscriberLimitPerUID(t *testing.T) {
	a := newAgent(t, agent.Config{})
	setUID := uidSeam(a)
	serveControl(t, a)
	setUID(1000)
	for range agent.MaxSubscribersPerUID {
		subscribe(t, a)
	}
	subscribeRefused(t, a, agent.MaxSubscribersPerUID+1)
	setUID(1001)
	_, snap := subscribe(t, a)
	if snap.Status.ControlRefused != 1 {
		t.Errorf("snapshot says %d refused, want 1", snap.Status.ControlRefused)
	}
}

// Regression test: the snapshot was written with no deadline, so a client
// that subscribed and never read held its slot and a goroutine forever on
// an idle agent.
func TestEventsSnapshotDeadline(t *testing.T) {
	a := newAgent(t, agent.Config{})
	agent.SetSnapshotWait(a, 100*time.Millisecond)
	l := newFakeListener()
	serveOn(t, a, l)
	c := l.pipeConn() // a pipe has no buffer: the snapshot waits for a read
	defer c.Close()
	c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(`{"op":"events"}` + "\n")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a subscriber", func() bool { return a.Subscribers() == 1 })
	start := time.Now()
	waitFor(t, "the subscriber that does not read to be cut off", func() bool { return a.Subscribers() == 0 })
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("cut off after %v, want about 100ms", d)
	}
}

// Regression test: every rejected client was a Warn line and an event, so
// a loop of connections to a busy port flooded the log and overflowed
// every subscriber.
func TestRejectedClientsThrottled(t *testing.T) {
	a := newAgent(t, agent.Config{})
	serveControl(t, a)
	p := agenttest.NewPort(1, "busy")
	p.SetHostConnected(true)
	addPort(t, a, 0, p)
	path := filepath.Join(a.Dir(), "busy")
	connectClient(t, p, path)
	s, _ := subscribe(t, a)
	const n = 200
	for range n {
		c := dial(t, path)
		expectClosed(t, c)
	}
	waitStatus(t, a, "every rejection counted", func(ps []agent.PortStatus) bool { return ps[0].RejectedClients == n })
	// A marker after the rejections: the events before it are all there is.
	a.ReportDevice(agent.DeviceEvent{Kind: agent.EventDeviceReset, Device: 0, Reason: "marker"})
	got := 0
	var last uint64
	for {
		ev := nextAny(t, s)
		if ev.Event == agent.EventDeviceReset {
			break
		}
		if ev.Event != agent.EventClientRejected {
			t.Fatalf("unexpected event %+v", ev)
		}
		got++
		last = ev.Rejected
	}
	if got == 0 || got > 15 {
		t.Errorf("%d client_rejected events for %d rejections, want a few (burst 10, then 1 a second)", got, n)
	}
	if last == 0 || last > n {
		t.Errorf("last rejected_total %d, want a running count up to %d", last, n)
	}
}

func perm(t *testing.T, path string) fs.FileMode {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

// Regression test: .control was created with the port sockets' mode, so
// making the ports usable by others exposed the control socket too.
func TestControlModeOwn(t *testing.T) {
	old := syscall.Umask(0o077)
	t.Cleanup(func() { syscall.Umask(old) })
	for _, c := range []struct {
		name      string
		ctl, want fs.FileMode
	}{
		{"default", 0, 0o600},
		{"configured", 0o660, 0o660},
	} {
		t.Run(c.name, func(t *testing.T) {
			a := newAgent(t, agent.Config{SocketMode: 0o666, ControlMode: c.ctl})
			if _, err := a.ListenControl(); err != nil {
				t.Fatal(err)
			}
			addPort(t, a, 0, agenttest.NewPort(1, "p"))
			if got := perm(t, agent.ControlPath(a.Dir())); got != c.want {
				t.Errorf(".control mode %#o, want %#o", got, c.want)
			}
			if got := perm(t, filepath.Join(a.Dir(), "p")); got != 0o666 {
				t.Errorf("port socket mode %#o, want the socket mode 0666", got)
			}
		})
	}
}
