package agent_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vserial/vserial/agent"
	"github.com/vserial/vserial/agent/agenttest"
)

// errFakeReset stands for driver.ErrDeviceReset (package agent must not
// see driver): bytes the port had queued were lost in a device reset.
var errFakeReset = errors.New("driver: device reset, queued bytes lost")

// TestSessionEndsOnDeviceReset characterizes what the agent does when a
// live session's port reports that a device reset lost bytes the client
// sent (driver.ErrDeviceReset): the client is ended, with that reason in
// the log and in client_disconnected; the port stays published (no
// port_removed, the socket stays) and the next client moves bytes both
// ways. It runs on both faces a port can have: Send and Recv pumped by the
// agent, and a data-plane loop the agent hands the descriptor to
// (agent.FDServer), whose ServeFD then returns the error.
func TestSessionEndsOnDeviceReset(t *testing.T) {
	for _, face := range []struct {
		name string
		port func(*agenttest.Port) agent.Port
	}{
		{"send-recv", func(p *agenttest.Port) agent.Port { return p }},
		{"fd-server", func(p *agenttest.Port) agent.Port { return fdPort{p} }},
	} {
		t.Run(face.name, func(t *testing.T) {
			var logs syncBuffer
			log := slog.New(slog.NewTextHandler(io.MultiWriter(tWriter{t}, &logs), &slog.HandlerOptions{Level: slog.LevelDebug}))
			a := newAgent(t, agent.Config{Logger: log})
			p := agenttest.NewPort(1, "rst")
			p.SetHostConnected(true)
			ap := face.port(p)
			if _, ok := ap.(agent.FDServer); ok != (face.name == "fd-server") {
				t.Fatalf("%s: the port implements FDServer: %v", face.name, ok)
			}
			if err := a.AddPort(0, ap); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(a.Dir(), "rst")
			serveControl(t, a)
			evs, _ := subscribe(t, a)

			c1 := connectClient(t, p, path)
			next(t, evs, agent.EventClientConnected)
			if _, err := c1.Write([]byte("before")); err != nil {
				t.Fatal(err)
			}
			waitPort(t, p, "bytes before the reset", func(s agenttest.State) bool { return string(s.Sent) == "before" })

			// The reset: what the session sends next is lost, and the
			// port says so.
			p.FailSend(errFakeReset)
			if _, err := c1.Write([]byte("lost")); err != nil {
				t.Fatal(err)
			}
			ev := next(t, evs, agent.EventClientDisconnected)
			checkPort(t, ev, 0, 1, "rst", path)
			if ev.Reason != errFakeReset.Error() {
				t.Errorf("client_disconnected reason %q, want the port's error %q", ev.Reason, errFakeReset.Error())
			}
			expectClosed(t, c1)
			s := waitPort(t, p, "PORT_OPEN 0", func(s agenttest.State) bool { return opensEqual(s.Opens, true, false) })
			// The reset is reported by the Send that read "lost" or, when
			// it lands between two Sends, by the next one before it reads
			// (the driver has both paths): either way nothing after it
			// reaches the host.
			if string(s.Sent) != "before" || (s.Lost != 0 && s.Lost != len("lost")) {
				t.Errorf("sent %q, lost %d bytes; want %q and 0 or %d", s.Sent, s.Lost, "before", len("lost"))
			}
			// The line comes right after the event.
			if !logs.waitLine(func(l string) bool {
				return strings.Contains(l, `msg="client gone"`) && strings.Contains(l, `why="`+errFakeReset.Error()+`"`)
			}) {
				t.Errorf("no log line saying the client went because of the reset; log:\n%s", logs.String())
			}

			// The port stays: same socket, listed, no client.
			if !exists(path) {
				t.Fatalf("socket %s gone after the reset", path)
			}
			st := waitStatus(t, a, "the port without a client", func(s []agent.PortStatus) bool {
				return len(s) == 1 && !s[0].ClientConnected
			})
			if st[0].Socket != path {
				t.Errorf("after the reset the port is %+v, want it published at %s", st[0], path)
			}

			// A new client works both ways.
			c2 := connectClient(t, p, path)
			ev = next(t, evs, agent.EventClientConnected)
			checkPort(t, ev, 0, 1, "rst", path)
			if _, err := c2.Write([]byte("after")); err != nil {
				t.Fatal(err)
			}
			waitPort(t, p, "bytes after the reset", func(s agenttest.State) bool { return string(s.Sent) == "beforeafter" })
			p.Deliver([]byte("hello"))
			c2.SetReadDeadline(time.Now().Add(patience))
			got := make([]byte, 5)
			if _, err := io.ReadFull(c2, got); err != nil || string(got) != "hello" {
				t.Fatalf("new client read %q, %v; want hello", got, err)
			}
			c2.Close()
			ev = next(t, evs, agent.EventClientDisconnected)
			if ev.Reason != "client closed" {
				t.Errorf("second client's reason %q, want client closed", ev.Reason)
			}
		})
	}
}

// syncBuffer is a bytes.Buffer for a logger written from several
// goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

// waitLine reports whether a line for which ok holds is logged within
// patience.
func (b *syncBuffer) waitLine(ok func(line string) bool) bool {
	for deadline := time.Now().Add(patience); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
		for l := range strings.Lines(b.String()) {
			if ok(l) {
				return true
			}
		}
	}
	return false
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// fdPort is the fake port served the way a data-plane loop serves one
// (agent.FDServer): ServeFD moves bytes between the client's non-blocking
// descriptor and the fake's Send and Recv, and returns the first error
// Send or Flush reports (FailSend's included), or io.EOF once the client
// closed and everything it sent was taken.
type fdPort struct{ *agenttest.Port }

func (p fdPort) ServeFD(ctx context.Context, fd int) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		w := fdWriter{ctx: ctx, fd: fd}
		for ctx.Err() == nil {
			if _, err := p.Recv(ctx, w); err != nil {
				return
			}
		}
	})
	defer wg.Wait() // the caller closes fd after ServeFD: nobody may use it then
	defer cancel()
	r := fdReader{ctx: ctx, fd: fd, host: p.HostConnected}
	for {
		_, err := p.Send(ctx, r)
		switch {
		case err == nil:
		case errors.Is(err, io.EOF):
			if err := p.Flush(ctx); err != nil {
				return err
			}
			return io.EOF
		default:
			return err
		}
	}
}

// pollFD waits, in short slices so that ctx is looked at, until fd has
// one of events (POLLIN, POLLOUT) or ctx ends.
func pollFD(ctx context.Context, fd int, events int16) error {
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: events}}
		n, err := unix.Poll(fds, 20)
		if err != nil && err != unix.EINTR {
			return err
		}
		if n > 0 {
			return nil
		}
	}
}

// fdReader reads the client's descriptor while the host is connected.
type fdReader struct {
	ctx  context.Context
	fd   int
	host func() bool
}

func (r fdReader) Read(b []byte) (int, error) {
	for {
		if !r.host() {
			select {
			case <-r.ctx.Done():
				return 0, r.ctx.Err()
			case <-time.After(20 * time.Millisecond):
			}
			continue
		}
		n, err := unix.Read(r.fd, b)
		switch {
		case err == unix.EAGAIN:
			if err := pollFD(r.ctx, r.fd, unix.POLLIN); err != nil {
				return 0, err
			}
		case err == unix.EINTR:
		case err != nil:
			return 0, err
		case n == 0:
			return 0, io.EOF
		default:
			return n, nil
		}
	}
}

// fdWriter writes all of b to the client's descriptor.
type fdWriter struct {
	ctx context.Context
	fd  int
}

func (w fdWriter) Write(b []byte) (int, error) {
	done := 0
	for done < len(b) {
		n, err := unix.Write(w.fd, b[done:])
		switch {
		case err == unix.EAGAIN:
			if err := pollFD(w.ctx, w.fd, unix.POLLOUT); err != nil {
				return done, err
			}
		case err == unix.EINTR:
		case err != nil:
			return done, err
		default:
			done += n
		}
	}
	return done, nil
}
