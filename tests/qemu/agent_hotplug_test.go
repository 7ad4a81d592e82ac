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

// The hot-plug tests' ports: a steady one plugged at boot, and the hot one
// plugged and unplugged at nr hotplugNr.
const (
	hotplugSteady = "org.vserial.steady"
	hotplugNr     = 5
	hotplugRounds = 3 // hotplugUnplugDuringTransfer cases
)

// hotplugEnv is the one boot a hot-plug test's cases share.
type hotplugEnv struct {
	a *runningAgent
	g *Guest
	// hotName is the hot port's name ("" for none); the harness knows it
	// as hot (its QEMU id), the agent by the socket hotSock.
	hotName, hot, hotSock string
	// sconn is the host side of the steady port, connected from the start.
	sconn      net.Conn
	steadySock string
}

// plug hot-plugs the port, waits for its socket and checks that data moves
// both ways byte-exact (no byte of an earlier incarnation shows up on
// either side).
func (env *hotplugEnv) plug(ctx context.Context, t *testing.T, seed uint64) net.Conn {
	t.Helper()
	if _, err := env.g.HotplugPort(ctx, Port{Name: env.hotName, Nr: hotplugNr}); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	if err := env.g.WaitPath(ctx, env.hotSock, 30*time.Second); err != nil {
		t.Fatalf("plugged port: %v", err)
	}
	t.Logf("plugged %s (nr %d): socket after %v", env.hot, hotplugNr, time.Since(t0).Round(time.Millisecond))
	conn := env.g.DialPort(t, env.hot)
	if err := both(ctx, t, env.g, conn, env.hotSock, 2<<20, seed); err != nil {
		t.Fatalf("plugged port: %v", err)
	}
	if err := nothingMore(conn, 300*time.Millisecond); err != nil {
		t.Errorf("plugged port: %v", err)
	}
	return conn
}

// hotplugCase is one case of a hot-plug test. The cases run in order on
// one boot and hand the hot port's state on, as their comments say; a
// failed case with stopOnFailure ends the test.
type hotplugCase struct {
	name          string
	run           func(t *testing.T, env *hotplugEnv)
	stopOnFailure bool
}

// hotplugCases are the cases in order: hotplugRounds unplugs during
// transfers, an unplug while both directions are blocked, two kinds of
// re-plug, and the agent's log.
func hotplugCases() []hotplugCase {
	var cs []hotplugCase
	for round := range hotplugRounds {
		cs = append(cs, hotplugCase{
			name:          fmt.Sprintf("unplug-during-transfer-%d", round),
			run:           func(t *testing.T, env *hotplugEnv) { hotplugUnplugDuringTransfer(t, env, round) },
			stopOnFailure: true,
		})
	}
	return append(cs,
		hotplugCase{name: "unplug-while-blocked", run: hotplugUnplugWhileBlocked},
		hotplugCase{name: "replug-after-unplugs", run: hotplugReplugAfterUnplugs},
		hotplugCase{name: "replug-at-once", run: hotplugReplugAtOnce},
		hotplugCase{name: "agent-log-clean", run: hotplugAgentLogClean},
	)
}

// testHotplug boots opts with the steady port, runs vserial-agent and runs
// hotplugCases with a hot port named hotName ("" for none).
func testHotplug(t *testing.T, opts Options, hotName string) {
	env := &hotplugEnv{hotName: hotName, hot: hotName, hotSock: AgentSocket(hotName), steadySock: AgentSocket(hotplugSteady)}
	if hotName == "" {
		env.hot, env.hotSock = fmt.Sprintf("port%d", hotplugNr), AgentSocket(fmt.Sprintf("vport0p%d", hotplugNr))
	}
	opts.Ports = []Port{{Name: hotplugSteady, Nr: 1}}
	env.a = bootAgent(t, opts, hotplugSteady)
	env.g = env.a.g
	if opts.Packed {
		checkRingPacked(t.Context(), t, env.g)
	}
	env.sconn = env.g.DialPort(t, hotplugSteady)
	for _, c := range hotplugCases() {
		if !t.Run(c.name, func(t *testing.T) { c.run(t, env) }) && c.stopOnFailure {
			env.a.logList(t)
			t.FailNow()
		}
	}
}

// hotplugUnplugDuringTransfer plugs the hot port and unplugs it while an
// endless echo runs through it both ways and the steady port echoes 16 MiB
// across the unplug: the hot port's client and host side end (no hang, no
// foreign byte), the steady port finishes byte-exact, and the list is back
// to the steady port alone. round (0..hotplugRounds-1) picks the seeds.
func hotplugUnplugDuringTransfer(t *testing.T, env *hotplugEnv, round int) {
	ctx := caseCtx(t, 4*time.Minute)
	seed := uint64(1000 * (round + 1))
	hconn := env.plug(ctx, t, seed)

	// The steady port: the guest echoes what the host writes, in
	// two parts; the second is written after the unplug, so the
	// transfer spans it.
	const n1, n2 = 8 << 20, 8 << 20
	sp, _ := env.g.Port(hotplugSteady)
	mark := env.g.QMP.Mark()
	secho, err := env.g.Start(ctx, "echo", env.steadySock)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.g.QMP.WaitPortChange(ctx, mark, sp.ID, true); err != nil {
		t.Fatalf("steady echo client: %v", err)
	}
	sendSecond := make(chan struct{})
	swerr := make(chan error, 1)
	go func() {
		defer deadline(ctx, env.sconn)()
		src := wire.Pattern(seed + 1)
		if _, err := io.CopyN(env.sconn, src, n1); err != nil {
			swerr <- err
			return
		}
		select {
		case <-sendSecond:
		case <-ctx.Done():
			swerr <- ctx.Err()
			return
		}
		_, err := io.CopyN(env.sconn, src, n2)
		swerr <- err
	}()
	sum := make(chan string, 1)
	srerr := make(chan error, 1)
	go func() {
		got, err := readChecked(ctx, env.sconn, n1+n2)
		srerr <- err
		sum <- got
	}()

	// The hot port: an endless echo, both directions at once.
	hecho, err := env.g.Start(ctx, "echo", env.hotSock)
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
	if err := env.g.UnplugPort(ctx, env.hot); err != nil {
		t.Fatal(err)
	}
	t.Logf("unplugged %s in %v with %d bytes written and %d echoed back so far", env.hot,
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
	if _, err := env.g.Run(ctx, "wait-gone", env.hotSock, "30"); err != nil {
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
	if err := nothingMore(env.sconn, 300*time.Millisecond); err != nil {
		t.Error(err)
	}

	l, _, err := env.a.list(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := l.port(env.hotSock); ok || len(l.Agent.Ports) != 1 {
		t.Errorf("after the unplug list shows %d ports (the unplugged one: %v)", len(l.Agent.Ports), ok)
	}
}

// hotplugUnplugWhileBlocked: both directions stuck: the guest client writes
// and never reads, the host writes and never reads. The agent holds filled
// receive buffers it cannot hand to the client and transmit buffers the
// device does not return (QEMU throttles the port). The unplug must still
// end the client (an error on its write, not a hang), and the same id
// plugged again must carry only its own bytes. It leaves the hot port
// unplugged.
func hotplugUnplugWhileBlocked(t *testing.T, env *hotplugEnv) {
	ctx := caseCtx(t, 4*time.Minute)
	hconn := env.plug(ctx, t, 8000)
	src, err := env.g.Start(ctx, "source", env.hotSock, strconv.Itoa(256<<20), "8001")
	if err != nil {
		t.Fatal(err)
	}
	hw := make(chan error, 1)
	go func() { hw <- writePattern(ctx, hconn, 16<<20, 8002) }()
	var before listPort
	env.a.waitList(ctx, t, "the hot port's transfers stuck both ways", func(l agentList) bool {
		p, ok := l.port(env.hotSock)
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
	if err := env.g.UnplugPort(ctx, env.hot); err != nil {
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
	if _, err := env.g.Run(ctx, "wait-gone", env.hotSock, "30"); err != nil {
		t.Errorf("after the unplug: %v", err)
	}
	hconn.Close()
	<-hw
}

// hotplugReplugAfterUnplugs: after the unplugs of the cases before it, the
// same id plugged again carries 8 MiB both ways and is listed with its id,
// name and socket. It leaves the hot port plugged, for hotplugReplugAtOnce.
func hotplugReplugAfterUnplugs(t *testing.T, env *hotplugEnv) {
	ctx := caseCtx(t, 3*time.Minute)
	conn := env.plug(ctx, t, 9000)
	if err := both(ctx, t, env.g, conn, env.hotSock, 8<<20, 9100); err != nil {
		t.Fatal(err)
	}
	l, _, err := env.a.list(ctx)
	if err != nil {
		t.Fatal(err)
	}
	p, ok := l.port(env.hotSock)
	if !ok || p.ID != hotplugNr || p.Socket != env.hotSock || p.Name != env.hotName {
		t.Errorf("re-plugged port listed as %+v (found %v), want id %d name %q socket %s", p, ok, hotplugNr, env.hotName, env.hotSock)
	}
	t.Logf("after %d unplugs during transfers: %s", hotplugRounds, strconv.Quote(fmt.Sprintf("%+v", p)))
	conn.Close()
}

// hotplugReplugAtOnce: device_del and device_add of the same id back to
// back, while a guest client is connected: the removal and the new port race
// in the agent. The new port must get the name's socket and carry data. It
// needs the hot port plugged (hotplugReplugAfterUnplugs leaves it so).
func hotplugReplugAtOnce(t *testing.T, env *hotplugEnv) {
	ctx := caseCtx(t, 4*time.Minute)
	for i := range 3 {
		client, err := env.g.Start(ctx, "sink", env.hotSock, "1")
		if err != nil {
			t.Fatal(err)
		}
		env.a.waitList(ctx, t, "a client on the hot port", func(l agentList) bool {
			p, ok := l.port(env.hotSock)
			return ok && p.ClientConnected
		})
		if err := env.g.UnplugPort(ctx, env.hot); err != nil {
			t.Fatal(err)
		}
		if _, err := env.g.HotplugPort(ctx, Port{Name: env.hotName, Nr: hotplugNr}); err != nil {
			t.Fatal(err)
		}
		conn := env.g.DialPort(t, env.hot)
		if _, err := client.Wait(ctx); err == nil {
			t.Errorf("the client of the removed port finished normally without its byte")
		}
		l := env.a.waitList(ctx, t, "the re-plugged port host-connected", func(l agentList) bool {
			p, ok := l.port(env.hotSock)
			return ok && p.HostConnected && len(l.Agent.Ports) == 2
		})
		if p, _ := l.port(env.hotSock); p.Socket != env.hotSock || p.NameProblem != "" || p.ClientConnected {
			t.Fatalf("re-plug %d: the new port is listed as %+v, want socket %s, no name problem, no client", i+1, p, env.hotSock)
		}
		if err := both(ctx, t, env.g, conn, env.hotSock, 1<<20, uint64(9200+10*i)); err != nil {
			t.Fatalf("re-plug %d: %v", i+1, err)
		}
		conn.Close()
	}
}

// hotplugAgentLogClean: every unplug of the cases before it was ordinary
// protocol: on SIGTERM the agent exits 0 and its log has no device fault, no
// protocol violation, no error. It stops the agent, so it comes last.
func hotplugAgentLogClean(t *testing.T, env *hotplugEnv) {
	ctx := caseCtx(t, 2*time.Minute)
	out, err := env.a.stop(ctx)
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
}
