package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"reflect"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vserial/vserial/tests/qemu/internal/wire"
)

// echoStream drives a guest `echo` client from the host side of its port:
// it writes wire.Pattern(seed) without end and checks that what comes back
// is that pattern, byte for byte, until the connection ends.
type echoStream struct {
	back    atomic.Int64 // bytes echoed back and checked
	wrote   atomic.Int64
	wdone   chan error // the writer's end
	rdone   chan error // the reader's end (nil error: EOF after matching bytes)
	corrupt atomic.Bool
}

func startEchoStream(conn net.Conn, seed uint64) *echoStream {
	s := &echoStream{wdone: make(chan error, 1), rdone: make(chan error, 1)}
	go func() {
		src := wire.Pattern(seed)
		buf := make([]byte, 32<<10)
		for {
			_, _ = src.Read(buf)
			n, err := conn.Write(buf)
			s.wrote.Add(int64(n))
			if err != nil {
				s.wdone <- err
				return
			}
		}
	}()
	go func() {
		ref := wire.Pattern(seed)
		buf := make([]byte, 64<<10)
		want := make([]byte, 64<<10)
		for {
			n, err := conn.Read(buf)
			if n > 0 {
				_, _ = ref.Read(want[:n])
				if !bytes.Equal(buf[:n], want[:n]) {
					s.corrupt.Store(true)
					s.rdone <- fmt.Errorf("echoed bytes differ from the pattern within bytes %d..%d", s.back.Load(), s.back.Load()+int64(n))
					return
				}
				s.back.Add(int64(n))
			}
			if err != nil {
				if errors.Is(err, io.EOF) {
					err = nil
				}
				s.rdone <- err
				return
			}
		}
	}()
	return s
}

// TestAgentHotplug hot-unplugs a port while a transfer runs through it in
// both directions and another port streams, then re-plugs the same id
// (same nr= and name) and moves data through it again; several times.
func TestAgentHotplug(t *testing.T) {
	t.Parallel()
	testHotplug(t, Options{MaxPorts: 8}, "org.vserial.hot")
}

// TestAgentHotplugModern is TestAgentHotplug on the modern-only device
// (disable-legacy=on) with a hot port that has no name: it is re-plugged
// under the same vport name.
func TestAgentHotplugModern(t *testing.T) {
	t.Parallel()
	testHotplug(t, Options{MaxPorts: 8, DisableLegacy: true}, "")
}

// TestAgentHotplugPacked is TestAgentHotplug on a packed=on device: the
// hot port's queues, created before DRIVER_OK, are packed rings too.
func TestAgentHotplugPacked(t *testing.T) {
	t.Parallel()
	testHotplug(t, Options{MaxPorts: 8, Packed: true}, "org.vserial.hot")
}

func testHotplug(t *testing.T, opts Options, hotName string) {
	const (
		steady = "org.vserial.steady"
		hotNr  = 5
		rounds = 3
	)
	// The harness knows an unnamed port by its QEMU id, the agent by its
	// vport name.
	hot, hotSock := hotName, AgentSocket(hotName)
	if hotName == "" {
		hot, hotSock = fmt.Sprintf("port%d", hotNr), AgentSocket(fmt.Sprintf("vport0p%d", hotNr))
	}
	opts.Ports = []Port{{Name: steady, Nr: 1}}
	a := bootAgent(t, opts, steady)
	g := a.g
	if opts.Packed {
		checkRingPacked(t.Context(), t, g)
	}
	sconn := g.DialPort(t, steady)
	steadySock := AgentSocket(steady)

	// plug hot-plugs the port, waits for its socket and checks that data
	// moves both ways byte-exact (no byte of an earlier incarnation shows
	// up on either side).
	plug := func(ctx context.Context, t *testing.T, seed uint64) net.Conn {
		t.Helper()
		if _, err := g.HotplugPort(ctx, Port{Name: hotName, Nr: hotNr}); err != nil {
			t.Fatal(err)
		}
		t0 := time.Now()
		if err := g.WaitPath(ctx, hotSock, 30*time.Second); err != nil {
			t.Fatalf("plugged port: %v", err)
		}
		t.Logf("plugged %s (nr %d): socket after %v", hot, hotNr, time.Since(t0).Round(time.Millisecond))
		conn := g.DialPort(t, hot)
		if err := both(ctx, t, g, conn, hotSock, 2<<20, seed); err != nil {
			t.Fatalf("plugged port: %v", err)
		}
		if err := nothingMore(conn, 300*time.Millisecond); err != nil {
			t.Errorf("plugged port: %v", err)
		}
		return conn
	}

	for round := range rounds {
		ok := t.Run(fmt.Sprintf("unplug-during-transfer-%d", round), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
			defer cancel()
			seed := uint64(1000 * (round + 1))
			hconn := plug(ctx, t, seed)

			// The steady port: the guest echoes what the host writes, in
			// two parts; the second is written after the unplug, so the
			// transfer spans it.
			const n1, n2 = 8 << 20, 8 << 20
			sp, _ := g.Port(steady)
			mark := g.QMP.Mark()
			secho, err := g.Start(ctx, "echo", steadySock)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := g.QMP.WaitPortChange(ctx, mark, sp.ID, true); err != nil {
				t.Fatalf("steady echo client: %v", err)
			}
			sendSecond := make(chan struct{})
			swerr := make(chan error, 1)
			go func() {
				defer deadline(ctx, sconn)()
				src := wire.Pattern(seed + 1)
				if _, err := io.CopyN(sconn, src, n1); err != nil {
					swerr <- err
					return
				}
				select {
				case <-sendSecond:
				case <-ctx.Done():
					swerr <- ctx.Err()
					return
				}
				_, err := io.CopyN(sconn, src, n2)
				swerr <- err
			}()
			sum := make(chan string, 1)
			srerr := make(chan error, 1)
			go func() {
				got, err := readChecked(ctx, sconn, n1+n2)
				srerr <- err
				sum <- got
			}()

			// The hot port: an endless echo, both directions at once.
			hecho, err := g.Start(ctx, "echo", hotSock)
			if err != nil {
				t.Fatal(err)
			}
			hs := startEchoStream(hconn, seed+2)
			for hs.back.Load() < 2<<20 {
				select {
				case err := <-hs.rdone:
					t.Fatalf("hot port before the unplug, after %d bytes echoed: %v", hs.back.Load(), err)
				case <-ctx.Done():
					t.Fatalf("hot port: only %d bytes echoed", hs.back.Load())
				case <-time.After(20 * time.Millisecond):
				}
			}
			t0 := time.Now()
			if err := g.UnplugPort(ctx, hot); err != nil {
				t.Fatal(err)
			}
			t.Logf("unplugged %s in %v with %d bytes written and %d echoed back so far", hot,
				time.Since(t0).Round(time.Millisecond), hs.wrote.Load(), hs.back.Load())
			close(sendSecond)

			// The hot port's guest client sees the end, not a hang.
			wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
			out, err := hecho.Wait(wctx)
			wcancel()
			if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
				t.Errorf("the hot port's guest client still runs 30 s after the unplug (hung)")
				_ = hecho.Signal(ctx, 9)
			} else {
				t.Logf("hot guest client ended: %v %s", err, strings.TrimSpace(out))
			}
			if _, err := g.Run(ctx, "wait-gone", hotSock, "30"); err != nil {
				t.Errorf("after the unplug: %v", err)
			}
			// The host side ends too (QEMU closed the chardev); what came
			// back was the pattern, in order.
			hconn.Close()
			select {
			case err := <-hs.rdone:
				if hs.corrupt.Load() {
					t.Errorf("hot port: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Errorf("hot port host reader did not end")
			}

			// The steady port finishes byte-exact, with no stall.
			t1 := time.Now()
			if err := <-swerr; err != nil {
				t.Fatalf("steady port, host writing: %v", err)
			}
			if err := <-srerr; err != nil {
				t.Fatalf("steady port, host reading the echo: %v", err)
			}
			want, _ := patternSum(n1+n2, seed+1)
			if got := <-sum; got != want {
				t.Errorf("steady port echoed %d bytes with sha256 %s, host sent %s", n1+n2, got, want)
			}
			t.Logf("steady port: %d bytes out and back byte-exact, finished %v after the unplug",
				n1+n2, time.Since(t1).Round(time.Millisecond))
			if err := secho.Signal(ctx, 15); err != nil {
				t.Fatal(err)
			}
			_, _ = secho.Wait(ctx)
			if err := nothingMore(sconn, 300*time.Millisecond); err != nil {
				t.Error(err)
			}

			l, _, err := a.list(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := l.port(hotSock); ok || len(l.Agent.Ports) != 1 {
				t.Errorf("after the unplug list shows %d ports (the unplugged one: %v)", len(l.Agent.Ports), ok)
			}
		})
		if !ok {
			a.logList(t)
			t.FailNow()
		}
	}

	t.Run("unplug-while-blocked", func(t *testing.T) {
		// Both directions stuck: the guest client writes and never reads,
		// the host writes and never reads. The agent holds filled receive
		// buffers it cannot hand to the client and transmit buffers the
		// device does not return (QEMU throttles the port). The unplug
		// must still end the client (an error on its write, not a hang),
		// and the same id plugged again must carry only its own bytes.
		ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
		defer cancel()
		hconn := plug(ctx, t, 8000)
		src, err := g.Start(ctx, "source", hotSock, strconv.Itoa(256<<20), "8001")
		if err != nil {
			t.Fatal(err)
		}
		hw := make(chan error, 1)
		go func() { hw <- writePattern(ctx, hconn, 16<<20, 8002) }()
		var before listPort
		a.waitList(ctx, t, "the hot port's transfers stuck both ways", func(l agentList) bool {
			p, ok := l.port(hotSock)
			p.Counters = nil // the loop's counters may move while bytes do not
			stuck := ok && p.ClientConnected && p.BytesIn > 0 && p.BytesOut > 0 && reflect.DeepEqual(p, before)
			before = p
			time.Sleep(time.Second)
			return stuck
		})
		if src.Exited() {
			out, err := src.Wait(ctx)
			t.Fatalf("the guest writer finished with nobody reading: %v %s", err, out)
		}
		// (bytes_in counts what the client socket took; the agent's
		// write to it is blocked, holding the port's receive buffers.)
		t.Logf("counters stopped: bytes_in %d, bytes_out %d", before.BytesIn, before.BytesOut)
		if err := g.UnplugPort(ctx, hot); err != nil {
			t.Fatal(err)
		}
		wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
		out, err := src.Wait(wctx)
		wcancel()
		switch {
		case errors.Is(err, context.DeadlineExceeded):
			t.Errorf("the blocked guest writer still runs 30 s after the unplug (hung)")
			_ = src.Signal(ctx, 9)
		case err == nil:
			t.Errorf("the guest writer finished normally though its port went away: %s", out)
		default:
			t.Logf("blocked guest writer ended: %v", err)
		}
		if _, err := g.Run(ctx, "wait-gone", hotSock, "30"); err != nil {
			t.Errorf("after the unplug: %v", err)
		}
		hconn.Close()
		<-hw
	})

	t.Run("replug-after-unplugs", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
		defer cancel()
		conn := plug(ctx, t, 9000)
		if err := both(ctx, t, g, conn, hotSock, 8<<20, 9100); err != nil {
			t.Fatal(err)
		}
		l, _, err := a.list(ctx)
		if err != nil {
			t.Fatal(err)
		}
		p, ok := l.port(hotSock)
		if !ok || p.ID != hotNr || p.Socket != hotSock || p.Name != hotName {
			t.Errorf("re-plugged port listed as %+v (found %v), want id %d name %q socket %s", p, ok, hotNr, hotName, hotSock)
		}
		t.Logf("after %d unplugs during transfers: %s", rounds, strconv.Quote(fmt.Sprintf("%+v", p)))
		conn.Close()
	})

	t.Run("replug-at-once", func(t *testing.T) {
		// device_del and device_add of the same id back to back, while a
		// guest client is connected: the removal and the new port race in
		// the agent. The new port must get the name's socket and carry
		// data.
		ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
		defer cancel()
		for i := range 3 {
			client, err := g.Start(ctx, "sink", hotSock, "1")
			if err != nil {
				t.Fatal(err)
			}
			a.waitList(ctx, t, "a client on the hot port", func(l agentList) bool {
				p, ok := l.port(hotSock)
				return ok && p.ClientConnected
			})
			if err := g.UnplugPort(ctx, hot); err != nil {
				t.Fatal(err)
			}
			if _, err := g.HotplugPort(ctx, Port{Name: hotName, Nr: hotNr}); err != nil {
				t.Fatal(err)
			}
			conn := g.DialPort(t, hot)
			if _, err := client.Wait(ctx); err == nil {
				t.Errorf("the client of the removed port finished normally without its byte")
			}
			l := a.waitList(ctx, t, "the re-plugged port host-connected", func(l agentList) bool {
				p, ok := l.port(hotSock)
				return ok && p.HostConnected && len(l.Agent.Ports) == 2
			})
			if p, _ := l.port(hotSock); p.Socket != hotSock || p.NameProblem != "" || p.ClientConnected {
				t.Fatalf("re-plug %d: the new port is listed as %+v, want socket %s, no name problem, no client", i+1, p, hotSock)
			}
			if err := both(ctx, t, g, conn, hotSock, 1<<20, uint64(9200+10*i)); err != nil {
				t.Fatalf("re-plug %d: %v", i+1, err)
			}
			conn.Close()
		}
	})

	t.Run("agent-log-clean", func(t *testing.T) {
		// Every unplug above was ordinary protocol: no device fault, no
		// protocol violation, no error in the agent's log.
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
		defer cancel()
		out, err := a.stop(ctx)
		if err != nil {
			t.Fatalf("vserial-agent after SIGTERM: %v, want exit 0\n%s", err, out)
		}
		for line := range strings.Lines(out) {
			if strings.Contains(line, "level=WARN") {
				t.Logf("agent warning: %s", strings.TrimSpace(line))
			}
		}
		for _, bad := range []string{"level=ERROR", "device fault", "violation", "panic"} {
			if strings.Contains(out, bad) {
				t.Errorf("the agent log has %q:\n%s", bad, out)
				break
			}
		}
	})
}
