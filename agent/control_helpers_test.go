package agent_test

// Clients of the control socket for the tests: serving it, dialing it as a
// given uid, scripted listeners, one-line exchanges and subscriptions.

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vserial/vserial/agent"
)

func serveControl(t *testing.T, a *agent.Agent) {
	t.Helper()
	l, err := a.ListenControl()
	if err != nil {
		t.Fatal(err)
	}
	serveOn(t, a, l)
}

// serveOn runs ServeControl on l until the end of the test.
func serveOn(t *testing.T, a *agent.Agent, l net.Listener) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- a.ServeControl(l) }()
	t.Cleanup(func() {
		a.Close()
		// ErrClosed: the test ended before ServeControl started.
		if err := <-done; err != nil && !errors.Is(err, agent.ErrClosed) {
			t.Errorf("ServeControl: %v", err)
		}
	})
}

// controlExchange sends one request line on a's control socket and returns
// the first line of the answer.
func controlExchange(t *testing.T, a *agent.Agent, req string) (string, error) {
	t.Helper()
	c, err := net.Dial("unix", agent.ControlPath(a.Dir()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(req + "\n")); err != nil {
		return "", err
	}
	return bufio.NewReader(c).ReadString('\n')
}

// uidSeam makes the agent see a control connection made by dialAs as
// coming from the uid given there, and any other as coming from the uid
// last given to the returned function (which only holds for a connection
// the agent answered before the next call).
func uidSeam(a *agent.Agent) func(uid uint32) {
	var cur atomic.Uint32
	agent.SetPeerUID(a, func(c net.Conn) uint32 {
		var uid uint32
		if _, err := fmt.Sscanf(c.RemoteAddr().String(), "@vserial-test-uid-%d-", &uid); err == nil {
			return uid
		}
		return cur.Load()
	})
	return func(uid uint32) { cur.Store(uid) }
}

var dialSeq atomic.Uint64

// dialAs connects to the control socket of a from an abstract address that
// names uid (see uidSeam).
func dialAs(t *testing.T, a *agent.Agent, uid uint32) *net.UnixConn {
	t.Helper()
	laddr := &net.UnixAddr{Name: fmt.Sprintf("@vserial-test-uid-%d-%d-%d", uid, os.Getpid(), dialSeq.Add(1)), Net: "unix"}
	c, err := net.DialUnix("unix", laddr, &net.UnixAddr{Name: agent.ControlPath(a.Dir()), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// fakeListener hands out what its script says: an error or a connection,
// then blocks until closed. It records when each Accept was called.
type fakeListener struct {
	script chan func() (net.Conn, error)
	done   chan struct{}
	once   sync.Once

	mu    sync.Mutex
	calls []time.Time
}

func newFakeListener() *fakeListener {
	return &fakeListener{script: make(chan func() (net.Conn, error), 16), done: make(chan struct{})}
}

func (l *fakeListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	l.calls = append(l.calls, time.Now())
	l.mu.Unlock()
	select {
	case f := <-l.script:
		return f()
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *fakeListener) Close() error { l.once.Do(func() { close(l.done) }); return nil }

func (l *fakeListener) Addr() net.Addr { return &net.UnixAddr{Name: "fake", Net: "unix"} }

// pipeConn queues a connection on l and returns the client's end.
func (l *fakeListener) pipeConn() net.Conn {
	client, server := net.Pipe()
	l.script <- func() (net.Conn, error) { return server, nil }
	return client
}

// readRefusal reads what the agent answers on c within a second.
func readRefusal(t *testing.T, c net.Conn) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("no answer on a connection beyond the limit: %v", err)
	}
	return line
}

// idleConns opens n control connections of uid that send nothing.
func idleConns(t *testing.T, a *agent.Agent, uid uint32, n int) {
	t.Helper()
	for range n {
		dialAs(t, a, uid)
	}
}

// nextAny reads the next event of s, whatever its kind.
func nextAny(t *testing.T, s *agent.EventStream) agent.Event {
	t.Helper()
	ev, _, err := s.Next()
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

// subscribe opens an event stream and returns it with its snapshot.
func subscribe(t *testing.T, a *agent.Agent) (*agent.EventStream, agent.Event) {
	t.Helper()
	s, err := agent.SubscribeEvents(waitCtx(t), a.Dir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	ev, _, err := s.Next()
	if err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	if ev.Event != agent.EventSnapshot || ev.Status == nil {
		t.Fatalf("first line %+v, want the snapshot", ev)
	}
	return s, ev
}

// subscribeRefused subscribes once more and expects the agent to refuse:
// "too many event subscribers". n numbers the attempt in the failure.
func subscribeRefused(t *testing.T, a *agent.Agent, n int) {
	t.Helper()
	s, err := agent.SubscribeEvents(waitCtx(t), a.Dir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, _, err := s.Next(); err == nil || !strings.Contains(err.Error(), "too many event subscribers") {
		t.Errorf("subscriber %d: %v, want too many subscribers", n, err)
	}
}
