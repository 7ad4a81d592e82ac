package qemu

import (
	"context"
	"crypto/sha256"
	"fmt"
	"hash"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// The vserial-agent guest tests: the real agent binary in a real guest,
// checked from the host through the ports' chardev sockets and QMP. One boot
// per QEMU command line (TestAgentMultiport, TestAgentModern,
// TestAgentSinglePort), many cases per boot.

// Ports of the multiport boot: three named ports that carry data at once,
// one port without a name, and four more named ones so the agent serves
// eight ports (idle and memory figures).
var (
	mpNamed   = []string{"org.vserial.a", "org.vserial.b", "org.vserial.c"}
	mpExtra   = []string{"org.vserial.e5", "org.vserial.e6", "org.vserial.e7", "org.vserial.e8"}
	mpUnnamed = Port{Nr: 4}
)

// The harness knows the unnamed port by its QEMU id, the agent by its
// vport name.
const (
	mpUnnamedKey  = "port4"
	mpUnnamedSock = "vport0p4"
)

// multiportEnv is the one boot TestAgentMultiport's cases share: the
// agent, its guest, and the host side of every port, connected from the
// start so data and events flow.
type multiportEnv struct {
	a       *runningAgent
	g       *Guest
	ports   []Port   // as plugged at boot
	sockets []string // the agent's socket names for ports, in order
	keys    []string // the harness's port keys (name, or mpUnnamedKey for the unnamed one)
	// conns is the host side of each port, by key. A case that closes one
	// replaces it before it returns.
	conns map[string]*net.UnixConn
}

// sockOf is the agent socket path of the port with harness key k.
func (env *multiportEnv) sockOf(k string) string {
	if k == mpUnnamedKey {
		return AgentSocket(mpUnnamedSock)
	}
	return AgentSocket(k)
}

// dialAll connects the host side of every port.
func (env *multiportEnv) dialAll(t *testing.T) {
	for _, k := range env.keys {
		env.conns[k] = env.g.DialPort(t, k)
	}
}

// restartAfterFailure is for a failed case, which may leave the agent hung: it takes
// the agent's goroutine dump and starts a fresh one, so each later case is
// judged on its own. The host side reconnects too: bytes of the failed
// case still queued in QEMU or in the old sockets must not leak into the
// next case.
func (env *multiportEnv) restartAfterFailure(t *testing.T) {
	if !env.a.restart(t, env.sockets...) {
		t.FailNow()
	}
	for _, k := range env.keys {
		env.conns[k].Close()
	}
	time.Sleep(time.Second) // QEMU notices the hang-ups
	env.dialAll(t)
}

// multiportCases run in this order on one boot. Each starts from the
// boot's state (every host side connected, no guest client), and leaves
// it so, except sigterm, which stops the agent and comes last.
var multiportCases = []guestCase[*multiportEnv]{
	{"transitional-device", multiportTransitionalDevice},
	{"socket-names", multiportSocketNames},
	{"list-json", multiportListJSON},
	{"data-three-ports-at-once", multiportDataThreePortsAtOnce},
	{"full-duplex-echo", multiportFullDuplexEcho},
	{"unnamed-port-data", multiportUnnamedPortData},
	{"host-data-waits-for-client", multiportHostDataWaitsForClient},
	{"vserport-change-events", multiportVserportChangeEvents},
	{"second-client-rejected", multiportSecondClientRejected},
	{"host-reconnect-no-loss", multiportHostReconnectNoLoss},
	{"client-leaves-while-host-away", multiportClientLeavesWhileHostAway},
	{"hotplug", multiportHotplug},
	{"idle-cost", multiportIdleCost},
	{"sigterm", multiportSigterm},
}

// TestAgentMultiport boots the default (transitional) device with eight
// ports, runs vserial-agent on it and runs multiportCases.
func TestAgentMultiport(t *testing.T) {
	t.Parallel()
	ports := []Port{{Name: mpNamed[0], Nr: 1}, {Name: mpNamed[1], Nr: 2}, {Name: mpNamed[2], Nr: 3}, mpUnnamed}
	for i, n := range mpExtra {
		ports = append(ports, Port{Name: n, Nr: 5 + i})
	}
	env := &multiportEnv{
		ports:   ports,
		sockets: slices.Concat(mpNamed, []string{mpUnnamedSock}, mpExtra),
		keys:    slices.Concat(mpNamed, []string{mpUnnamedKey}, mpExtra),
		conns:   map[string]*net.UnixConn{},
	}
	env.a = bootAgent(t, Options{Ports: ports, MaxPorts: 16}, env.sockets...)
	env.g = env.a.g
	env.dialAll(t)
	for _, c := range multiportCases {
		if !t.Run(c.name, func(t *testing.T) { c.run(t, env) }) && !env.a.stopd {
			env.restartAfterFailure(t)
		}
	}
}

// multiportTransitionalDevice: the default virtio-serial-pci is the
// transitional device (0x1003) and is bound to uio_pci_generic while the
// agent runs.
func multiportTransitionalDevice(t *testing.T, env *multiportEnv) {
	fn := findVirtioConsole(t, env.g)
	id := strings.TrimSpace(env.g.MustRun(t, "cat", fn+"/device"))
	t.Logf("virtio-console function %s: device id %s", fn, id)
	if id != "0x1003" {
		t.Errorf("default virtio-serial-pci on pcie.0 has device id %s, want the transitional 0x1003", id)
	}
	drv := strings.TrimSpace(env.g.MustRun(t, "readlink", fn+"/driver"))
	if !strings.HasSuffix(drv, "/uio_pci_generic") {
		t.Errorf("%s is bound to %q while the agent runs, want uio_pci_generic", fn, drv)
	}
}

// multiportSocketNames: the socket directory holds one socket per port,
// named after the port (or vportNpM without a name), and nothing else.
func multiportSocketNames(t *testing.T, env *multiportEnv) {
	ctx := caseCtx(t, time.Minute)
	got, err := ls(ctx, env.g, AgentSocketDir)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: %s", AgentSocketDir, strings.Join(got, " "))
	for _, s := range env.sockets {
		if !slices.Contains(got, s) {
			t.Errorf("no socket %s in %s (has %v)", s, AgentSocketDir, got)
		}
	}
	for _, s := range got {
		if !strings.HasPrefix(s, ".") && !slices.Contains(env.sockets, s) {
			t.Errorf("unexpected entry %s in %s", s, AgentSocketDir)
		}
	}
}

// multiportListJSON: `vserial-agent list --json` shows the agent, its one
// function and all eight ports with their ids and names; a client shows as
// connected and its bytes are counted.
func multiportListJSON(t *testing.T, env *multiportEnv) {
	ctx := caseCtx(t, 2*time.Minute)
	l := env.a.waitList(ctx, t, "all 8 ports host-connected", func(l agentList) bool {
		n := 0
		for _, p := range l.Agent.Ports {
			if p.HostConnected {
				n++
			}
		}
		return n == 8
	})
	if !l.Agent.Running || l.Agent.SocketDir != AgentSocketDir {
		t.Errorf("list: agent running=%v socket_dir=%q", l.Agent.Running, l.Agent.SocketDir)
	}
	if len(l.Functions) != 1 || l.Functions[0].Driver != "uio_pci_generic" {
		t.Errorf("list functions = %+v, want one virtio-console function bound to uio_pci_generic", l.Functions)
	}
	if len(l.Agent.Ports) != 8 {
		t.Errorf("list shows %d ports, want 8: %+v", len(l.Agent.Ports), l.Agent.Ports)
	}
	for _, p := range env.ports {
		k := p.Name
		if k == "" {
			k = mpUnnamedKey
		}
		lp, ok := l.port(env.sockOf(k))
		if !ok {
			t.Errorf("list has no port with socket %s", env.sockOf(k))
			continue
		}
		if lp.ID != uint32(p.Nr) || lp.Name != p.Name || lp.Device != 0 || lp.ClientConnected {
			t.Errorf("list port %+v, want id %d name %q device 0, no client", lp, p.Nr, p.Name)
		}
	}
	// A client shows as connected, and its bytes are counted.
	sock := env.sockOf(mpNamed[1])
	before, _ := l.port(sock)
	const n = 4097
	proc, err := env.g.Start(ctx, "sink", sock, strconv.Itoa(n))
	if err != nil {
		t.Fatal(err)
	}
	env.a.waitList(ctx, t, "a client on "+sock, func(l agentList) bool {
		p, _ := l.port(sock)
		return p.ClientConnected
	})
	if err := writePattern(ctx, env.conns[mpNamed[1]], n, 77); err != nil {
		t.Fatal(err)
	}
	if _, err := proc.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	after := env.a.waitList(ctx, t, "the client gone and its bytes counted", func(l agentList) bool {
		p, _ := l.port(sock)
		return !p.ClientConnected && p.BytesIn >= before.BytesIn+n
	})
	p, _ := after.port(sock)
	if p.BytesIn != before.BytesIn+n {
		t.Errorf("bytes_in went from %d to %d after %d bytes host→guest", before.BytesIn, p.BytesIn, n)
	}
	// No stream has run yet: on this one-vCPU guest (one P) the loop
	// slept parked in Go's poller around those bytes and never waited raw,
	// which only a batched stream does there (docs/data-plane.md). The
	// device's counters are on each port.
	if p.Counters["loop_batch_toggles"] != 0 || p.Counters["loop_raw_waits"] != 0 || p.Counters["loop_parks"] == 0 {
		t.Errorf("after one small message and no stream: loop_raw_waits %d, loop_parks %d, loop_batch_toggles %d; want parks only",
			p.Counters["loop_raw_waits"], p.Counters["loop_parks"], p.Counters["loop_batch_toggles"])
	}
	env.a.logList(t)
}

// multiportDataThreePortsAtOnce: three named ports carry data both ways at
// once, byte-exact, from 1 byte to 24 MiB, and the loop's counters show
// the stream paths at work (raw waits, real-time passes over several
// clients).
func multiportDataThreePortsAtOnce(t *testing.T, env *multiportEnv) {
	ctx := caseCtx(t, 3*time.Minute)
	sizes := map[string][]int64{
		mpNamed[0]: {1, 4<<10 + 1, 1 << 20, 24 << 20},
		mpNamed[1]: {1, 4<<10 + 1, 1 << 20, 4 << 20},
		mpNamed[2]: {1, 4<<10 + 1, 1 << 20, 4 << 20},
	}
	var wg sync.WaitGroup
	t0 := time.Now()
	for i, name := range mpNamed {
		wg.Go(func() {
			for j, n := range sizes[name] {
				if err := both(ctx, t, env.g, env.conns[name], env.sockOf(name), n, uint64(100*i+j)); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	t.Logf("three ports, both ways: %v", time.Since(t0).Round(time.Millisecond))
	if t.Failed() {
		env.a.logList(t)
		return
	}
	// The streams ran the data plane's stream paths: waits that Go's
	// scheduler does not see, and passes over several clients at once
	// run real-time (the agent is root here). The device's counters are
	// repeated on each of its ports.
	l, out, err := env.a.list(ctx)
	if err != nil {
		t.Fatal(err)
	}
	p, ok := l.port(env.sockOf(mpNamed[0]))
	if !ok {
		t.Fatalf("no port %s in list --json: %s", mpNamed[0], out)
	}
	for _, k := range []string{"loop_raw_waits", "loop_rt_passes"} {
		if p.Counters[k] == 0 {
			t.Errorf("three streams at once, but %s is 0: %v", k, p.Counters)
		}
	}
}

// multiportFullDuplexEcho: both directions of one port at once: the guest
// echoes what the host writes while the host is still writing.
func multiportFullDuplexEcho(t *testing.T, env *multiportEnv) {
	ctx := caseCtx(t, 3*time.Minute)
	name := mpNamed[2]
	conn := env.conns[name]
	const n, seed = 8 << 20, 300
	want, _ := patternSum(n, seed)
	mark := env.g.QMP.Mark()
	p, _ := env.g.Port(name)
	echo, err := env.g.Start(ctx, "echo", env.sockOf(name))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.g.QMP.WaitPortChange(ctx, mark, p.ID, true); err != nil {
		t.Fatalf("echo client: no VSERPORT_CHANGE open=true: %v", err)
	}
	werr := make(chan error, 1)
	go func() { werr <- writePattern(ctx, conn, n, seed) }()
	t0 := time.Now()
	got, err := readChecked(ctx, conn, n)
	if err != nil {
		t.Fatalf("reading the echo: %v", err)
	}
	if err := <-werr; err != nil {
		t.Fatalf("host write: %v", err)
	}
	secs := time.Since(t0).Seconds()
	if got != want {
		t.Errorf("echoed %d bytes have sha256 %s, sent %s", n, got, want)
	}
	t.Logf("full duplex: %d bytes out and back in %.2f s (%.1f MB/s each way)", n, secs, n/secs/1e6)
	if err := echo.Signal(ctx, 15); err != nil {
		t.Fatal(err)
	}
	out, err := echo.Wait(ctx)
	t.Logf("guest echo stopped: %v %s", err, strings.TrimSpace(out))
	if err := nothingMore(conn, 300*time.Millisecond); err != nil {
		t.Error(err)
	}
}

// multiportUnnamedPortData: a port without a name carries data both ways.
func multiportUnnamedPortData(t *testing.T, env *multiportEnv) {
	ctx := caseCtx(t, 2*time.Minute)
	if err := both(ctx, t, env.g, env.conns[mpUnnamedKey], env.sockOf(mpUnnamedKey), 64<<10, 400); err != nil {
		t.Fatal(err)
	}
}

// multiportHostDataWaitsForClient: with no client the port is closed for the
// host: QEMU keeps the host's bytes until a client connects, then all of
// them arrive and none is discarded.
func multiportHostDataWaitsForClient(t *testing.T, env *multiportEnv) {
	ctx := caseCtx(t, 2*time.Minute)
	sock := env.sockOf(mpUnnamedKey)
	before, _, err := env.a.list(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := before.port(sock)
	if b.ClientConnected {
		t.Fatalf("%s has a client already", sock)
	}
	const n, seed = 10000, 404
	if err := writePattern(ctx, env.conns[mpUnnamedKey], n, seed); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // the bytes sit on the host side meanwhile
	out, err := env.g.Run(ctx, "sink", sock, strconv.Itoa(n))
	if err != nil {
		t.Fatalf("client connecting after the host wrote: %v", err)
	}
	want, _ := patternSum(n, seed)
	if got := ParseKV(out)["sha256"]; got != want {
		t.Errorf("the late client received sha256 %s, host sent %s", got, want)
	}
	after, _, err := env.a.list(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if p, _ := after.port(sock); p.Discarded != b.Discarded {
		t.Errorf("discarded went from %d to %d", b.Discarded, p.Discarded)
	}
}

// multiportVserportChangeEvents: a guest client connecting and leaving shows
// to the host as VSERPORT_CHANGE events.
func multiportVserportChangeEvents(t *testing.T, env *multiportEnv) {
	name := mpNamed[1]
	checkPortChangeEvents(caseCtx(t, 2*time.Minute), t, env.g, env.conns[name], name, env.sockOf(name))
}

// multiportSecondClientRejected: a second client on a taken port is closed
// and counted in rejected_clients; the first client still gets every byte.
func multiportSecondClientRejected(t *testing.T, env *multiportEnv) {
	ctx := caseCtx(t, 2*time.Minute)
	name := mpNamed[2]
	sock := env.sockOf(name)
	p, _ := env.g.Port(name)
	const n = 64 << 10
	mark := env.g.QMP.Mark()
	first, err := env.g.Start(ctx, "sink", sock, strconv.Itoa(n))
	if err != nil {
		t.Fatal(err)
	}
	// The open event proves the agent took the first client.
	if _, err := env.g.QMP.WaitPortChange(ctx, mark, p.ID, true); err != nil {
		t.Fatalf("first client: no VSERPORT_CHANGE open=true: %v", err)
	}
	out, err := env.g.Run(ctx, "rejected", sock, "10")
	if err != nil {
		t.Fatalf("second client on %s was not closed: %v", sock, err)
	}
	t.Logf("second client: %s", strings.TrimSpace(out))
	// The first client still works, byte for byte.
	if err := writePattern(ctx, env.conns[name], n, 9); err != nil {
		t.Fatal(err)
	}
	sout, err := first.Wait(ctx)
	if err != nil {
		t.Fatalf("first client after the rejection: %v", err)
	}
	want, _ := patternSum(n, 9)
	if got := ParseKV(sout)["sha256"]; got != want {
		t.Errorf("first client received sha256 %s, host sent %s", got, want)
	}
	l := env.a.waitList(ctx, t, "the rejection counted", func(l agentList) bool {
		p, _ := l.port(sock)
		return p.RejectedClients >= 1
	})
	lp, _ := l.port(sock)
	if lp.RejectedClients != 1 {
		t.Errorf("rejected_clients = %d, want 1", lp.RejectedClients)
	}
}

// multiportHostReconnectNoLoss: the host side disconnecting and reconnecting
// loses no byte. It replaces env.conns[mpNamed[0]].
func multiportHostReconnectNoLoss(t *testing.T, env *multiportEnv) {
	name := mpNamed[0]
	checkHostReconnect(caseCtx(t, 4*time.Minute), t, env.a, env.conns, name, env.sockOf(name))
}

// multiportClientLeavesWhileHostAway: a client writes and closes while the
// host is away: the bytes wait in the socket, the port stays taken (new
// clients are rejected), and the host receives them all when it comes back.
// It closes env.conns[mpNamed[0]] and replaces it.
func multiportClientLeavesWhileHostAway(t *testing.T, env *multiportEnv) {
	ctx := caseCtx(t, 3*time.Minute)
	name := mpNamed[0]
	sock := env.sockOf(name)
	env.conns[name].Close()
	env.a.waitList(ctx, t, name+" host-disconnected", func(l agentList) bool {
		p, _ := l.port(sock)
		return !p.HostConnected && !p.ClientConnected
	})
	const n, seed = 64 << 10, 55
	want, _ := patternSum(n, seed)
	out, err := env.g.Run(ctx, "source", sock, strconv.Itoa(n), strconv.Itoa(seed))
	if err != nil {
		t.Fatalf("guest client writing %d bytes and closing while the host is away: %v", n, err)
	}
	if sent := ParseKV(out)["sha256"]; sent != want {
		t.Fatalf("guest source sha256 %s, expected %s", sent, want)
	}
	rout, err := env.g.Run(ctx, "rejected", sock, "10")
	if err != nil {
		t.Errorf("a new client while the old one's bytes wait for the host: %v (want it rejected)", err)
	} else {
		t.Logf("new client while bytes wait: %s", strings.TrimSpace(rout))
	}
	conn := env.g.DialPort(t, name)
	env.conns[name] = conn
	got, err := readChecked(ctx, conn, n)
	if err != nil {
		t.Fatalf("host back: %v", err)
	}
	if got != want {
		t.Errorf("host received sha256 %s, the client wrote %s", got, want)
	}
	if err := nothingMore(conn, 300*time.Millisecond); err != nil {
		t.Error(err)
	}
	// The port is free again.
	if _, err := SendToGuest(ctx, env.g, conn, sock, 4<<10+1, 56); err != nil {
		t.Errorf("next client: %v", err)
	}
}

// multiportHotplug: a port hot-plugged with a name, and one without (it gets
// the vport name), gets its socket and carries data; unplugged, its socket
// goes and the list is back to the eight boot ports.
func multiportHotplug(t *testing.T, env *multiportEnv) {
	ctx := caseCtx(t, 3*time.Minute)
	const name = "org.vserial.hot"
	sock := AgentSocket(name)
	if _, err := env.g.HotplugPort(ctx, Port{Name: name, Nr: 9}); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	if err := env.g.WaitPath(ctx, sock, 30*time.Second); err != nil {
		t.Fatalf("hot-plugged port: %v", err)
	}
	t.Logf("hot-plugged %s: socket after %v", name, time.Since(t0).Round(time.Millisecond))
	conn := env.g.DialPort(t, name)
	if err := both(ctx, t, env.g, conn, sock, 64<<10, 900); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	if err := env.g.UnplugPort(ctx, name); err != nil {
		t.Fatal(err)
	}
	if _, err := env.g.Run(ctx, "wait-gone", sock, "30"); err != nil {
		t.Fatalf("unplugged port: %v", err)
	}
	l, _, err := env.a.list(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := l.port(sock); ok || len(l.Agent.Ports) != 8 {
		t.Errorf("after unplug list shows %d ports (hot one present: %v)", len(l.Agent.Ports), ok)
	}

	// A hot-plugged port without a name gets the vport name.
	hp, err := env.g.HotplugPort(ctx, Port{Nr: 10})
	if err != nil {
		t.Fatal(err)
	}
	usock := AgentSocket("vport0p10")
	if err := env.g.WaitPath(ctx, usock, 30*time.Second); err != nil {
		t.Fatalf("hot-plugged unnamed port: %v", err)
	}
	uconn := env.g.DialPort(t, hp.ID)
	if err := both(ctx, t, env.g, uconn, usock, 4<<10+1, 901); err != nil {
		t.Fatal(err)
	}
	uconn.Close()
	if err := env.g.UnplugPort(ctx, hp.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := env.g.Run(ctx, "wait-gone", usock, "30"); err != nil {
		t.Fatalf("unplugged unnamed port: %v", err)
	}
}

// multiportIdleCost: with clients on the four extra ports and no traffic the
// agent uses at most 2% CPU, and its resident memory stays within 100 MiB.
func multiportIdleCost(t *testing.T, env *multiportEnv) {
	ctx := caseCtx(t, 2*time.Minute)
	// Clients on the four extra ports, all hosts connected, no traffic.
	var procs []*Proc
	for _, name := range mpExtra {
		p, err := env.g.Start(ctx, "sink", env.sockOf(name), "1")
		if err != nil {
			t.Fatal(err)
		}
		procs = append(procs, p)
	}
	env.a.waitList(ctx, t, "clients on the extra ports", func(l agentList) bool {
		for _, name := range mpExtra {
			if p, _ := l.port(env.sockOf(name)); !p.ClientConnected || !p.HostConnected {
				return false
			}
		}
		return true
	})
	time.Sleep(time.Second) // let connection set-up work settle
	c0, err := cpuSeconds(ctx, env.g, env.a.proc.Pid)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	time.Sleep(5 * time.Second)
	c1, err := cpuSeconds(ctx, env.g, env.a.proc.Pid)
	if err != nil {
		t.Fatal(err)
	}
	interval := time.Since(t0).Seconds()
	used := c1 - c0
	t.Logf("idle: agent used %.2f s CPU over %.1f s (%.2f%%), 8 ports, 4 clients connected", used, interval, 100*used/interval)
	if used > 0.02*interval {
		t.Errorf("idle agent used %.2f s CPU in %.1f s, more than 2%%", used, interval)
	}
	rss, err := procStatusKiB(ctx, env.g, env.a.proc.Pid, "VmRSS")
	if err != nil {
		t.Fatal(err)
	}
	hwm, _ := procStatusKiB(ctx, env.g, env.a.proc.Pid, "VmHWM")
	t.Logf("agent memory with 8 ports: VmRSS %d KiB, VmHWM %d KiB", rss, hwm)
	if rss <= 0 || rss > 100<<10 {
		t.Errorf("VmRSS %d KiB is outside (0, 100 MiB]", rss)
	}
	for i, name := range mpExtra {
		if err := writePattern(ctx, env.conns[name], 1, 1); err != nil {
			t.Fatal(err)
		}
		if _, err := procs[i].Wait(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// multiportSigterm: on SIGTERM the agent exits 0 without a panic, the host
// sees the port close, the sockets go and a waiting client ends with an
// error. It stops the agent, so it must be the last case.
func multiportSigterm(t *testing.T, env *multiportEnv) {
	ctx := caseCtx(t, 2*time.Minute)
	name := mpNamed[1]
	p, _ := env.g.Port(name)
	mark := env.g.QMP.Mark()
	client, err := env.g.Start(ctx, "sink", env.sockOf(name), "100")
	if err != nil {
		t.Fatal(err)
	}
	next, err := env.g.QMP.WaitPortChange(ctx, mark, p.ID, true)
	if err != nil {
		t.Fatalf("no VSERPORT_CHANGE open=true for the client: %v", err)
	}
	out, err := env.a.stop(ctx)
	t.Logf("vserial-agent log:\n%s", out)
	if err != nil {
		t.Fatalf("vserial-agent after SIGTERM: %v, want exit 0", err)
	}
	if strings.Contains(out, "panic") {
		t.Errorf("the agent log mentions a panic")
	}
	if _, err := env.g.QMP.WaitPortChange(ctx, next, p.ID, false); err != nil {
		t.Errorf("host saw no VSERPORT_CHANGE open=false for %s after the agent stopped: %v", p.ID, err)
	}
	left, _ := ls(ctx, env.g, AgentSocketDir)
	for _, s := range left {
		if slices.Contains(env.sockets, s) {
			t.Errorf("socket %s still exists after the agent exited", s)
		}
	}
	t.Logf("%s after exit: %v", AgentSocketDir, left)
	if cout, err := client.Wait(ctx); err == nil {
		t.Errorf("the guest client finished normally without its 100 bytes: %s", cout)
	} else {
		t.Logf("guest client: %v", err)
	}
}

// partHash accumulates a stream read in several parts.
type partHash struct{ h hash.Hash }

func readPart(ctx context.Context, conn net.Conn, n int64) (*partHash, error) {
	ph := &partHash{h: sha256.New()}
	return ph, ph.add(ctx, conn, n)
}

func (ph *partHash) add(ctx context.Context, conn net.Conn, n int64) error {
	defer deadline(ctx, conn)()
	buf := make([]byte, 64<<10)
	var got int64
	for got < n {
		k, err := conn.Read(buf[:min(int64(len(buf)), n-got)])
		ph.h.Write(buf[:k])
		got += int64(k)
		if err != nil {
			return fmt.Errorf("after %d of %d bytes: %w", got, n, err)
		}
	}
	return nil
}

func (ph *partHash) sum() string { return fmt.Sprintf("%x", ph.h.Sum(nil)) }
