package agent_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vserial/vserial/agent"
	"github.com/vserial/vserial/agent/agenttest"
)

func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func TestSecondClientRejected(t *testing.T) {
	a := newAgent(t, agent.Config{})
	p := agenttest.NewPort(1, "one")
	p.SetHostConnected(true)
	addPort(t, a, 0, p)
	path := filepath.Join(a.Dir(), "one")
	first := connectClient(t, p, path)

	second := dial(t, path)
	expectClosed(t, second)
	waitStatus(t, a, "rejection counted", func(s []agent.PortStatus) bool {
		return len(s) == 1 && s[0].RejectedClients == 1 && s[0].ClientConnected
	})
	if got := p.State().Opens; !opensEqual(got, true) {
		t.Errorf("opens = %v, want [true]: the rejected client must not touch the port", got)
	}
	// The first client still works.
	if _, err := first.Write([]byte("still here")); err != nil {
		t.Fatal(err)
	}
	waitPort(t, p, "first client's bytes", func(s agenttest.State) bool { return string(s.Sent) == "still here" })

	// Once the first leaves, a new client is accepted.
	first.Close()
	waitPort(t, p, "PORT_OPEN 0", func(s agenttest.State) bool { return opensEqual(s.Opens, true, false) })
	waitStatus(t, a, "client slot free", func(s []agent.PortStatus) bool { return !s[0].ClientConnected })
	connectClient(t, p, path)
}

// A client that connects right after the previous one closed gets the port
// (once the old session has ended) instead of being turned away: with
// Linux's /dev/vport an open right after close works, and programs that
// reconnect at once rely on it.
func TestClientRightAfterCloseIsServed(t *testing.T) {
	a := newAgent(t, agent.Config{})
	p := agenttest.NewPort(1, "one")
	p.SetHostConnected(true)
	addPort(t, a, 0, p)
	path := filepath.Join(a.Dir(), "one")
	for i := range 20 {
		c := connectClient(t, p, path)
		msg := []byte{'a' + byte(i)}
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		waitPort(t, p, "the client's byte", func(s agenttest.State) bool { return bytes.HasSuffix(s.Sent, msg) })
		c.Close() // and at once the next one
	}
	waitStatus(t, a, "no client", func(s []agent.PortStatus) bool { return !s[0].ClientConnected })
	if st := a.Status(); st[0].RejectedClients != 0 {
		t.Errorf("%d clients rejected although each came after the previous one closed", st[0].RejectedClients)
	}
}

func TestGuestOpenFollowsClient(t *testing.T) {
	a := newAgent(t, agent.Config{})
	p := agenttest.NewPort(1, "one")
	addPort(t, a, 0, p)
	if got := p.State().Opens; len(got) != 0 {
		t.Fatalf("opens before any client = %v", got)
	}
	c := connectClient(t, p, filepath.Join(a.Dir(), "one"))
	waitStatus(t, a, "client connected", func(s []agent.PortStatus) bool { return s[0].ClientConnected })
	c.Close()
	s := waitPort(t, p, "PORT_OPEN 0", func(s agenttest.State) bool { return opensEqual(s.Opens, true, false) })
	if s.GuestOpen {
		t.Error("port still open after the client left")
	}
	// The host was never connected, and nothing was read from the client.
	if s.SendCalls != 0 {
		t.Errorf("Send called %d times with the host disconnected", s.SendCalls)
	}
}

// TestBackpressureWhileHostDisconnected pins the rule that the agent never
// reads client bytes while the host is away (QEMU would drop them): the
// client's writes block, and every byte arrives once the host connects.
func TestBackpressureWhileHostDisconnected(t *testing.T) {
	a := newAgent(t, agent.Config{})
	p := agenttest.NewPort(1, "bp")
	addPort(t, a, 0, p)
	c := connectClient(t, p, filepath.Join(a.Dir(), "bp"))

	payload := randomBytes(8<<20, 1) // far more than socket buffers hold
	// Write until the socket stops taking bytes.
	c.SetWriteDeadline(time.Now().Add(300 * time.Millisecond))
	n, err := c.Write(payload)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("client wrote %d of %d bytes with the host disconnected (err %v): the agent is reading", n, len(payload), err)
	}
	s := p.State()
	if s.SendCalls != 0 || s.SendBytesHostDown != 0 || len(s.Sent) != 0 {
		t.Fatalf("with the host disconnected: %d Send calls, %d bytes taken; want none", s.SendCalls, len(s.Sent))
	}
	// A change that is not the host connecting wakes the pump; it must go
	// back to waiting without reading.
	p.SetName("bp")
	p.SetHostConnected(true)
	c.SetWriteDeadline(time.Time{})
	if _, err := c.Write(payload[n:]); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	s = waitPort(t, p, "every byte and PORT_OPEN 0", func(s agenttest.State) bool {
		return len(s.Sent) == len(payload) && opensEqual(s.Opens, true, false)
	})
	if !bytes.Equal(s.Sent, payload) {
		t.Fatal("bytes arrived altered or out of order")
	}
	if s.SendBytesHostDown != 0 {
		t.Errorf("%d bytes taken while the host was disconnected", s.SendBytesHostDown)
	}
	if s.Flushes == 0 {
		t.Error("port closed without Flush after the client's EOF")
	}
	if s.Stats.BytesOut != uint64(len(payload)) {
		t.Errorf("BytesOut = %d, want %d", s.Stats.BytesOut, len(payload))
	}
}

// TestHostLeavesWhileClientIdle: the host disconnects while the agent waits
// for client bytes; what the client writes next must stay in the socket.
func TestHostLeavesWhileClientIdle(t *testing.T) {
	a := newAgent(t, agent.Config{})
	p := agenttest.NewPort(1, "idle")
	p.SetHostConnected(true)
	addPort(t, a, 0, p)
	c := connectClient(t, p, filepath.Join(a.Dir(), "idle"))
	if _, err := c.Write([]byte("first")); err != nil {
		t.Fatal(err)
	}
	waitPort(t, p, "first bytes", func(s agenttest.State) bool { return string(s.Sent) == "first" })
	p.SetHostConnected(false)
	if _, err := c.Write([]byte("second")); err != nil {
		t.Fatal(err)
	}
	// Give the agent a chance to look at the new bytes (a Send that reads
	// nothing), then check nothing was taken. Whether it looks at all
	// depends on which it notices first, the host leaving (then it waits
	// for the host and never calls Send) or the bytes: so this waits for
	// the look or half a second, whichever comes first.
	look, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	p.Wait(look, func(s agenttest.State) bool { return s.SendCalls >= 2 })
	cancel()
	if s := p.State(); string(s.Sent) != "first" || s.SendBytesHostDown != 0 {
		t.Fatalf("with the host gone the agent took %q (%d bytes while down)", s.Sent, s.SendBytesHostDown)
	}
	p.SetHostConnected(true)
	waitPort(t, p, "second bytes after the host returned", func(s agenttest.State) bool { return string(s.Sent) == "firstsecond" })
}

func TestClientLeavesWhileHostDisconnected(t *testing.T) {
	a := newAgent(t, agent.Config{})
	p := agenttest.NewPort(1, "gone")
	addPort(t, a, 0, p)
	path := filepath.Join(a.Dir(), "gone")
	c := connectClient(t, p, path)
	c.Close()
	// Nothing unread: the session ends although the host never came.
	waitPort(t, p, "PORT_OPEN 0", func(s agenttest.State) bool { return opensEqual(s.Opens, true, false) })
	waitStatus(t, a, "client slot free", func(s []agent.PortStatus) bool { return !s[0].ClientConnected })
	connectClient(t, p, path)
}

func TestHostToGuestByteExact(t *testing.T) {
	a := newAgent(t, agent.Config{})
	p := agenttest.NewPort(1, "h2g")
	p.SetHostConnected(true)
	addPort(t, a, 0, p)
	// Bytes the host sends before any client stay with the host (the port
	// is closed) and arrive first.
	early := []byte("sent before the client came\n")
	p.Deliver(early)
	c := connectClient(t, p, filepath.Join(a.Dir(), "h2g"))
	payload := randomBytes(3<<20, 2)
	go func() {
		for off := 0; off < len(payload); {
			n := min(len(payload)-off, 1+off%7000)
			p.Deliver(payload[off : off+n])
			off += n
		}
	}()
	want := append(append([]byte(nil), early...), payload...)
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("host→guest bytes arrived altered or out of order")
	}
	s := p.State()
	if s.Stats.BytesIn != uint64(len(want)) || s.Stats.Discarded != 0 {
		t.Errorf("stats %+v, want BytesIn %d and nothing discarded", s.Stats, len(want))
	}
}

// TestUnreadHostBytesDiscardedOnClose pins the Linux semantics specified in
// docs/sockets.md: bytes received but not read when the client leaves are discarded
// by PORT_OPEN 0 and counted.
func TestUnreadHostBytesDiscardedOnClose(t *testing.T) {
	a := newAgent(t, agent.Config{})
	p := agenttest.NewPort(1, "unread")
	p.SetHostConnected(true)
	addPort(t, a, 0, p)
	c := connectClient(t, p, filepath.Join(a.Dir(), "unread"))
	const chunk, chunks = 4 << 20, 3
	for i := range chunks {
		p.Deliver(randomBytes(chunk, uint64(i)))
	}
	// The agent is stuck writing the first chunk to a client that does
	// not read.
	waitPort(t, p, "first chunk in flight", func(s agenttest.State) bool { return s.Pending == (chunks-1)*chunk })
	c.Close()
	s := waitPort(t, p, "PORT_OPEN 0", func(s agenttest.State) bool { return opensEqual(s.Opens, true, false) })
	if s.Stats.BytesIn+s.Stats.Discarded != chunk*chunks {
		t.Errorf("BytesIn %d + Discarded %d != %d delivered", s.Stats.BytesIn, s.Stats.Discarded, chunk*chunks)
	}
	if s.Stats.Discarded < (chunks-1)*chunk {
		t.Errorf("Discarded = %d, want at least the %d unread bytes", s.Stats.Discarded, (chunks-1)*chunk)
	}
}

func TestOpenFailureFreesPort(t *testing.T) {
	a := newAgent(t, agent.Config{})
	p := agenttest.NewPort(1, "fail")
	p.FailOpen(errors.New("device said no"))
	addPort(t, a, 0, p)
	path := filepath.Join(a.Dir(), "fail")
	expectClosed(t, dial(t, path))
	waitStatus(t, a, "client slot free", func(s []agent.PortStatus) bool { return !s[0].ClientConnected })
	p.FailOpen(nil)
	connectClient(t, p, path)
	if got := p.State().Opens; !opensEqual(got, true) {
		t.Errorf("opens = %v, want [true] (no PORT_OPEN 0 for an open that failed)", got)
	}
}

func TestRemovalClosesClientAndSocket(t *testing.T) {
	a := newAgent(t, agent.Config{})
	p := agenttest.NewPort(4, "rm")
	p.SetHostConnected(true)
	addPort(t, a, 1, p)
	path := filepath.Join(a.Dir(), "rm")
	c := connectClient(t, p, path)
	p.Remove()
	expectClosed(t, c)
	waitStatus(t, a, "port gone", func(s []agent.PortStatus) bool { return len(s) == 0 })
	if exists(path) {
		t.Errorf("%s still exists after removal", path)
	}
	if got := p.State().Opens; !opensEqual(got, true) {
		t.Errorf("opens = %v: no PORT_OPEN 0 is sent for a removed port", got)
	}

	// The same id, plugged again, appears again.
	again := agenttest.NewPort(4, "rm")
	addPort(t, a, 1, again)
	if !exists(path) {
		t.Fatalf("%s missing after re-adding the port", path)
	}
	connectClient(t, again, path)
}

func TestAddPortRules(t *testing.T) {
	a := newAgent(t, agent.Config{})
	p := agenttest.NewPort(1, "x")
	addPort(t, a, 0, p)
	if err := a.AddPort(0, p); err == nil {
		t.Error("adding the same port twice succeeded")
	}
	if err := a.AddPort(0, agenttest.NewPort(1, "y")); err == nil {
		t.Error("adding a second live port with the same id succeeded")
	}
	if err := a.AddPort(-1, agenttest.NewPort(2, "z")); err == nil {
		t.Error("negative device index accepted")
	}
	// A removed port may be replaced before the agent noticed the removal.
	p.Remove()
	if err := a.AddPort(0, agenttest.NewPort(1, "x")); err != nil {
		t.Errorf("replacing a removed port: %v", err)
	}
	if !exists(filepath.Join(a.Dir(), "x")) {
		t.Error("replacement not published")
	}
}

func TestCloseCleansUp(t *testing.T) {
	a := newAgent(t, agent.Config{})
	p1 := agenttest.NewPort(1, "one")
	p2 := agenttest.NewPort(2, "")
	p1.SetHostConnected(true)
	addPort(t, a, 0, p1)
	addPort(t, a, 0, p2)
	l, err := a.ListenControl()
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- a.ServeControl(l) }()
	c := connectClient(t, p1, filepath.Join(a.Dir(), "one"))
	// A client blocked with the host away is woken too.
	c2 := connectClient(t, p2, filepath.Join(a.Dir(), "vport0p2"))
	if _, err := c2.Write([]byte("waiting")); err != nil {
		t.Fatal(err)
	}

	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	expectClosed(t, c)
	expectClosed(t, c2)
	for _, p := range []*agenttest.Port{p1, p2} {
		if got := p.State().Opens; !opensEqual(got, true, false) {
			t.Errorf("port %d opens = %v, want [true false]", p.ID(), got)
		}
	}
	ents, _ := os.ReadDir(a.Dir())
	if len(ents) != 0 {
		t.Errorf("socket dir not empty after Close: %v", ents)
	}
	if err := <-served; err != nil {
		t.Errorf("ServeControl: %v", err)
	}
	if err := a.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := a.AddPort(0, agenttest.NewPort(3, "late")); !errors.Is(err, agent.ErrClosed) {
		t.Errorf("AddPort after Close: %v, want ErrClosed", err)
	}
	if _, err := a.ListenControl(); !errors.Is(err, agent.ErrClosed) {
		t.Errorf("ListenControl after Close: %v, want ErrClosed", err)
	}
}

func TestHostStateInStatus(t *testing.T) {
	a := newAgent(t, agent.Config{})
	p := agenttest.NewPort(1, "h")
	addPort(t, a, 0, p)
	if s, _ := status(a, 0, 1); s.HostConnected {
		t.Fatal("host connected before it connected")
	}
	p.SetHostConnected(true)
	waitStatus(t, a, "host connected", func(s []agent.PortStatus) bool { return s[0].HostConnected })
}
