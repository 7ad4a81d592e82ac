package qemu

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vserial/vserial/agent"
	"github.com/vserial/vserial/tests/qemu/internal/wire"
)

// Helpers shared by the vserial-agent guest tests.

// agentList is the part of `vserial-agent list --json` the tests read.
type agentList struct {
	Functions []struct {
		Addr       string `json:"addr"`
		Vendor     string `json:"vendor"`
		Device     string `json:"device"`
		Driver     string `json:"driver"`
		IOMMUGroup string `json:"iommu_group"`
		Bind       string `json:"bind"`
		BindReason string `json:"bind_reason"`
	} `json:"functions"`
	// The agent's own status shape, so it is defined once.
	Agent agent.StatusReport `json:"agent"`
}

// listPort is one port of `list --json`: the agent's own status type, so
// the JSON shape is defined once.
type listPort = agent.PortStatus

// port returns the listed port whose socket is sock.
func (l agentList) port(sock string) (listPort, bool) {
	for _, p := range l.Agent.Ports {
		if p.Socket == sock {
			return p, true
		}
	}
	return listPort{}, false
}

// byName returns the listed port the host named name.
func (l agentList) byName(name string) (listPort, bool) {
	for _, p := range l.Agent.Ports {
		if p.Name == name {
			return p, true
		}
	}
	return listPort{}, false
}

// runningAgent is a guest with vserial-agent started in it.
type runningAgent struct {
	g     *Guest
	proc  *Proc
	stopd bool
	// args are the `run` options beyond --socket-dir and --log-level
	// (e.g. --bind vfio), also used by restart.
	args []string
}

// start starts vserial-agent run with the agent's args.
func (a *runningAgent) start(ctx context.Context) (*Proc, error) {
	return StartAgent(ctx, a.g, append([]string{"--log-level", "info"}, a.args...)...)
}

// bootAgent boots a guest with vserial-agent, starts the agent and waits
// until every socket in sockets (names under AgentSocketDir) exists. If the
// test fails while the agent still runs, the agent is stopped with SIGQUIT
// and its log and goroutine stacks are printed.
func bootAgent(t *testing.T, opts Options, sockets ...string) *runningAgent {
	t.Helper()
	return bootAgentArgs(t, opts, nil, sockets...)
}

// bootAgentArgs is bootAgent with extra arguments for `vserial-agent run`.
func bootAgentArgs(t *testing.T, opts Options, args []string, sockets ...string) *runningAgent {
	t.Helper()
	if !slices.ContainsFunc(opts.Files, func(f File) bool { return f.Dst == AgentPath }) {
		opts.Files = append(opts.Files, BuildAgent(t))
	}
	g := Boot(t, opts)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	t0 := time.Now()
	a := &runningAgent{g: g, args: args}
	p, err := a.start(ctx)
	if err != nil {
		t.Fatalf("starting vserial-agent %v: %v", args, err)
	}
	a.proc = p
	t.Cleanup(func() {
		if a.stopd || p.Exited() {
			if out, err := p.Wait(context.Background()); !a.stopd && t.Failed() {
				t.Logf("vserial-agent exited early (%v); its log:\n%s", err, out)
			}
			return
		}
		if !t.Failed() {
			return // the guest is killed anyway
		}
		// SIGQUIT: the Go runtime prints every goroutine's stack before
		// exiting, which shows where a hung data path waits.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = p.Signal(ctx, 3)
		out, err := p.Wait(ctx)
		t.Logf("vserial-agent stopped with SIGQUIT after the failure (%v); its log and goroutines:\n%s", err, out)
	})
	for _, s := range sockets {
		if err := g.WaitPath(ctx, AgentSocket(s), 60*time.Second); err != nil {
			if p.Exited() {
				out, err := p.Wait(ctx)
				t.Fatalf("vserial-agent exited before publishing %s: %v\n%s", s, err, out)
			}
			t.Fatalf("vserial-agent runs but did not publish %s: %v; %s holds: %s", s, err, AgentSocketDir,
				strings.Join(strings.Fields(g.MustRun(t, "ls", AgentSocketDir)), " "))
		}
	}
	t.Logf("vserial-agent (pid %d) published %v in %v", p.Pid, sockets, time.Since(t0).Round(time.Millisecond))
	return a
}

// restart is for a case that failed while the agent still runs (a hung
// data path): it stops the agent with SIGQUIT, logs its goroutine stacks
// and log, and starts a fresh agent so the remaining cases test something.
// It reports whether the new agent published sockets.
func (a *runningAgent) restart(t *testing.T, sockets ...string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if !a.proc.Exited() {
		_ = a.proc.Signal(ctx, 3)
	}
	out, err := a.proc.Wait(ctx)
	t.Logf("vserial-agent after the failed case, stopped with SIGQUIT (%v); its log and goroutines:\n%s", err, out)
	p, err := a.start(ctx)
	if err != nil {
		t.Errorf("restarting vserial-agent: %v", err)
		return false
	}
	a.proc = p
	for _, s := range sockets {
		if err := a.g.WaitPath(ctx, AgentSocket(s), 60*time.Second); err != nil {
			t.Errorf("restarted vserial-agent did not publish %s: %v", s, err)
			return false
		}
	}
	t.Logf("vserial-agent restarted (pid %d) for the remaining cases", p.Pid)
	return true
}

// stop sends SIGTERM and returns the agent's exit error and log.
func (a *runningAgent) stop(ctx context.Context) (string, error) {
	a.stopd = true
	if err := a.proc.Signal(ctx, 15); err != nil {
		return "", fmt.Errorf("sending SIGTERM: %w", err)
	}
	return a.proc.Wait(ctx)
}

// list runs `vserial-agent list --json` in the guest.
func (a *runningAgent) list(ctx context.Context) (agentList, string, error) {
	out, err := a.g.Run(ctx, AgentPath, "list", "--json")
	if err != nil {
		return agentList{}, out, err
	}
	var l agentList
	i := strings.IndexByte(out, '{')
	if i < 0 {
		return l, out, fmt.Errorf("list --json printed no JSON: %q", out)
	}
	if err := json.NewDecoder(strings.NewReader(out[i:])).Decode(&l); err != nil {
		return l, out, fmt.Errorf("list --json: %v in %q", err, out)
	}
	return l, out, nil
}

// listCounters returns the counters `list --json` gives for port name
// (its own and its device's, loop_…); it fails the test without them.
func (a *runningAgent) listCounters(ctx context.Context, t testing.TB, name string) map[string]uint64 {
	t.Helper()
	l, out, err := a.list(ctx)
	if err != nil {
		t.Fatalf("list --json: %v\n%s", err, out)
	}
	p, ok := l.byName(name)
	if !ok {
		t.Fatalf("no port %s in list --json: %s", name, out)
	}
	return p.Counters
}

// waitList polls `list --json` until ok accepts it; it fails the test with
// the last listing otherwise.
func (a *runningAgent) waitList(ctx context.Context, t testing.TB, what string, ok func(agentList) bool) agentList {
	t.Helper()
	var last string
	for {
		l, out, err := a.list(ctx)
		if err == nil && ok(l) {
			return l
		}
		last = out
		if err != nil {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			t.Fatalf("vserial-agent list never showed %s; last listing:\n%s", what, last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// logList logs the agent's ports, one line each (diagnostics after a
// failure: where the bytes stopped).
func (a *runningAgent) logList(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l, out, err := a.list(ctx)
	if err != nil {
		t.Logf("vserial-agent list: %v\n%s", err, out)
		return
	}
	for _, p := range l.Agent.Ports {
		t.Logf("list: dev %d id %d name %q socket %s host=%v client=%v in=%d out=%d discarded=%d violations=%d rejected=%d",
			p.Device, p.ID, p.Name, p.Socket, p.HostConnected, p.ClientConnected, p.BytesIn, p.BytesOut,
			p.Discarded, p.Violations, p.RejectedClients)
	}
}

// ls lists a guest directory.
func ls(ctx context.Context, g *Guest, dir string) ([]string, error) {
	out, err := g.Run(ctx, "ls", dir)
	return strings.Fields(out), err
}

// cpuSeconds returns the user+system CPU seconds of a guest process.
func cpuSeconds(ctx context.Context, g *Guest, pid int) (float64, error) {
	out, err := g.Run(ctx, "cputime", strconv.Itoa(pid))
	if err != nil {
		return 0, err
	}
	kv := ParseKV(out)
	u, err1 := strconv.ParseFloat(kv["utime_s"], 64)
	s, err2 := strconv.ParseFloat(kv["stime_s"], 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("cputime printed %q", out)
	}
	return u + s, nil
}

// procStatus returns one "Key: value" field of /proc/PID/status in KiB.
func procStatusKiB(ctx context.Context, g *Guest, pid int, key string) (int64, error) {
	out, err := g.Run(ctx, "cat", "/proc/"+strconv.Itoa(pid)+"/status")
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(out) {
		if v, ok := strings.CutPrefix(line, key+":"); ok {
			f := strings.Fields(v)
			if len(f) == 2 && f[1] == "kB" {
				return strconv.ParseInt(f[0], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", key, pid)
}

// readChecked reads exactly n bytes from conn and returns their sha256.
func readChecked(ctx context.Context, conn net.Conn, n int64) (string, error) {
	defer deadline(ctx, conn)()
	h := sha256.New()
	got, err := io.CopyN(h, conn, n)
	if err != nil {
		return "", fmt.Errorf("host read after %d of %d bytes: %w", got, n, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// nothingMore checks that no further byte arrives on conn within wait.
func nothingMore(conn net.Conn, wait time.Duration) error {
	_ = conn.SetReadDeadline(time.Now().Add(wait))
	defer conn.SetReadDeadline(time.Time{})
	var b [256]byte
	n, err := conn.Read(b[:])
	if n > 0 {
		return fmt.Errorf("%d unexpected extra bytes arrived: %q", n, b[:n])
	}
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return nil
	}
	return fmt.Errorf("reading after the expected bytes: %v", err)
}

// writePattern writes n bytes of wire.Pattern(seed) to conn.
func writePattern(ctx context.Context, conn net.Conn, n int64, seed uint64) error {
	defer deadline(ctx, conn)()
	_, err := io.CopyN(conn, wire.Pattern(seed), n)
	return err
}

// both moves n bytes host→guest and then n bytes guest→host through the
// agent socket sock, checking them byte for byte, and logs the speeds.
func both(ctx context.Context, t testing.TB, g *Guest, conn net.Conn, sock string, n int64, seed uint64) error {
	tr, err := SendToGuest(ctx, g, conn, sock, n, seed)
	if err != nil {
		return fmt.Errorf("%s host→guest %d bytes: %w", sock, n, err)
	}
	t.Logf("%s: host→guest %d bytes byte-exact%s", sock, n, speed(n, tr))
	tr, err = ReceiveFromGuest(ctx, g, conn, sock, n, seed+1000)
	if err != nil {
		return fmt.Errorf("%s guest→host %d bytes: %w", sock, n, err)
	}
	t.Logf("%s: guest→host %d bytes byte-exact%s", sock, n, speed(n, tr))
	return nil
}

// speed formats a transfer's speed when it means something (1 MiB or more).
func speed(n int64, tr Transfer) string {
	if n < 1<<20 {
		return ""
	}
	return fmt.Sprintf(", %.1f MB/s", tr.MBps)
}

// checkPortChangeEvents checks that a guest client connecting to the
// agent socket sock opens the port named name for the host (QMP
// VSERPORT_CHANGE open=true) and its leaving closes it (open=false). conn
// is the host side of the port; one byte goes through it.
func checkPortChangeEvents(ctx context.Context, t *testing.T, g *Guest, conn net.Conn, name, sock string) {
	t.Helper()
	p, _ := g.Port(name)
	mark := g.QMP.Mark()
	// The client stays connected (sink blocks) until the open event has
	// been seen: QEMU rate-limits the event per port and a quick
	// open+close could collapse into one.
	proc, err := g.Start(ctx, "sink", sock, "1")
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	next, err := g.QMP.WaitPortChange(ctx, mark, p.ID, true)
	if err != nil {
		t.Fatalf("no VSERPORT_CHANGE open=true for %s after a guest client connected: %v", p.ID, err)
	}
	t.Logf("VSERPORT_CHANGE %s open=true %v after the client started", p.ID, time.Since(t0).Round(time.Millisecond))
	if err := writePattern(ctx, conn, 1, 5); err != nil {
		t.Fatal(err)
	}
	if _, err := proc.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	t1 := time.Now()
	if _, err := g.QMP.WaitPortChange(ctx, next, p.ID, false); err != nil {
		t.Fatalf("no VSERPORT_CHANGE open=false for %s after the guest client disconnected: %v", p.ID, err)
	}
	t.Logf("VSERPORT_CHANGE %s open=false %v after the client exited", p.ID, time.Since(t1).Round(time.Millisecond))
}

// checkHostReconnect checks that no guest→host byte is lost or duplicated
// while the host side of the port named name goes away and comes back: a
// guest client streams to sock, the host takes exactly the first part and
// disconnects, the client blocks meanwhile (bytes_out stays put), and the
// host receives the rest after reconnecting. conns[name] is the host
// connection, replaced by the new one.
func checkHostReconnect(ctx context.Context, t *testing.T, a *runningAgent, conns map[string]*net.UnixConn, name, sock string) {
	t.Helper()
	g := a.g
	const n1, n2, seed = 1 << 20, 4 << 20, 31
	flag := "/tmp/reconnect-go"
	want, _ := patternSum(n1+n2, seed)
	proc, err := g.Start(ctx, "stream", sock, strconv.Itoa(seed), strconv.Itoa(n1), flag, strconv.Itoa(n2))
	if err != nil {
		t.Fatal(err)
	}
	// The host takes exactly the first part, so nothing is in flight
	// when it goes away.
	conn := conns[name]
	h, err := readPart(ctx, conn, n1)
	if err != nil {
		t.Fatalf("first part: %v", err)
	}
	conn.Close()
	l := a.waitList(ctx, t, name+" host-disconnected", func(l agentList) bool {
		p, _ := l.port(sock)
		return !p.HostConnected
	})
	away, _ := l.port(sock)
	// The guest client writes the second part while the host is away.
	g.MustRun(t, "touch", flag)
	const awayFor = 3 * time.Second
	time.Sleep(awayFor)
	if proc.Exited() {
		out, err := proc.Wait(ctx)
		t.Fatalf("the guest writer finished %d bytes while the host was away (no backpressure; bytes dropped?): %v %s", n2, err, out)
	}
	l, _, err = a.list(ctx)
	if err != nil {
		t.Fatal(err)
	}
	still, _ := l.port(sock)
	if still.BytesOut != away.BytesOut {
		t.Errorf("bytes_out moved from %d to %d while the host was away: the device took bytes nobody could receive", away.BytesOut, still.BytesOut)
	}
	t.Logf("host away %v: guest writer blocked, bytes_out stayed %d", awayFor, still.BytesOut)
	conn = g.DialPort(t, name)
	conns[name] = conn
	t0 := time.Now()
	if err := h.add(ctx, conn, n2); err != nil {
		t.Fatalf("second part after the host reconnected: %v", err)
	}
	t.Logf("after reconnecting, %d bytes in %v", n2, time.Since(t0).Round(time.Millisecond))
	out, err := proc.Wait(ctx)
	if err != nil {
		t.Fatalf("guest writer: %v", err)
	}
	if sent := ParseKV(out)["sha256"]; sent != want {
		t.Fatalf("guest writer sha256 %s, expected %s", sent, want)
	}
	if got := h.sum(); got != want {
		t.Errorf("host received %d bytes with sha256 %s, guest sent %s: bytes lost or duplicated around the reconnect", n1+n2, got, want)
	}
	if err := nothingMore(conn, 500*time.Millisecond); err != nil {
		t.Error(err)
	}
}

// caseCtx is a context for one case of a guest test: it ends after d or
// when the case ends.
func caseCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

// guestCase is one named case of a guest test's table: a top-level
// function run as a subtest on the environment E the test's one boot
// provides.
type guestCase[E any] struct {
	name string
	run  func(t *testing.T, env E)
}

// wantNice checks that every thread of the agent runs at nice want (run
// --nice auto: -10 on one CPU, 0 on more).
func (a *runningAgent) wantNice(ctx context.Context, t testing.TB, want int) {
	t.Helper()
	for tid, n := range threadNices(ctx, t, a.g, a.proc.Pid) {
		if n != want {
			t.Errorf("agent thread %s has nice %d, want %d", tid, n, want)
		}
	}
}

// threadNices reads the nice value of every thread of process pid in the
// guest (field 19 of /proc/PID/task/TID/stat), by thread id.
func threadNices(ctx context.Context, t testing.TB, g *Guest, pid int) map[string]int {
	t.Helper()
	dir := "/proc/" + strconv.Itoa(pid) + "/task"
	out, err := g.Run(ctx, "ls", dir)
	if err != nil {
		t.Fatalf("ls %s: %v", dir, err)
	}
	nices := map[string]int{}
	for _, tid := range strings.Fields(out) {
		stat, err := g.Run(ctx, "cat", dir+"/"+tid+"/stat")
		if err != nil {
			continue // the thread ended meanwhile
		}
		// After the command, which is in parentheses and may hold spaces.
		f := strings.Fields(stat[strings.LastIndexByte(stat, ')')+1:])
		if len(f) < 17 {
			t.Fatalf("stat of thread %s: %q", tid, stat)
		}
		n, err := strconv.Atoi(f[16])
		if err != nil {
			t.Fatalf("stat of thread %s: %q", tid, stat)
		}
		nices[tid] = n
	}
	if len(nices) == 0 {
		t.Fatalf("no thread of pid %d", pid)
	}
	return nices
}
