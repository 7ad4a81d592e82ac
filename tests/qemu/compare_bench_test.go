package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"net"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/vserial/vserial/tests/qemu/internal/wire"
)

// BenchmarkKernelVsAgent compares, in one guest boot, three ways for a
// guest program to reach a port, in interleaved rounds:
//
//	K  the in-kernel virtio_console driver's /dev/vportNpM, directly
//	S  the in-kernel driver behind `socat UNIX-LISTEN:PATH,fork /dev/vportNpM`
//	   (Debian's socat): the socket users have today
//	A  vserial-agent's socket
//	G  the Go library (package vserial): the guest program holds the port
//	   in-process, no socket (main rounds only)
//
// The guest programs are the same Go clients for all four (sink, source,
// pingpong of tests/qemu/guest; for G they open "vserial:BIND/ADDR/NAME",
// which takes the function for the phase and gives it back after). Run it
// alone on the host:
//
//	go test -run '^$' -bench KernelVsAgent -benchtime 1x -timeout 120m ./tests/qemu/
//
// One sub-benchmark per binding and vCPU count: uio-1cpu, uio-2cpu (the
// plain guest, agent on uio_pci_generic) and vfio-type1-1cpu,
// vfio-type1-2cpu (the IOMMU guest, agent on VFIO type1), and
// uio-1cpu-packed: uio-1cpu on a modern device with packed=on, so every
// arm (the kernel driver too) runs on the packed ring. Each boots once
// and runs, in order:
//
//  1. a calibration of the guest (calib: a syscall, a copy, process and
//     thread ping-pongs);
//  2. the main rounds: one warm-up round per arm, then VSERIAL_BENCH_ROUNDS
//     (default 5) rounds per arm in ABBA order (K S A G | G A S K | …);
//     each round moves VSERIAL_BENCH_MIB MiB (default 16) host→guest, as
//     many guest→host, and VSERIAL_BENCH_RTTS (default 1000) one-byte
//     round trips. The agent is started with --device for its round (it
//     takes the function from virtio-pci) and stopped with SIGTERM after
//     it (it gives the function back);
//  3. eight ports streaming at once, K against A, each direction
//     separately, in the same ABBA rounds;
//  4. a one-way trickle (1 byte every ms, no replies) through the agent,
//     with its default polling and with --poll off;
//  5. idle: the agent with eight connected clients and the host connected,
//     over 5 s;
//  6. the calibration again.
//
// docs/benchmarks.md explains every line of the output.
func BenchmarkKernelVsAgent(b *testing.B) {
	cfg, err := benchConfigFromEnv()
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		opts   Options
		bind   string
		cpus   []int
		suffix string
	}{
		{"uio", Options{}, "uio", []int{1, 2}, ""},
		{"vfio-type1", Options{IOMMU: true, Modules: []string{"vfio-pci", "vfio_iommu_type1"}}, "vfio", []int{1, 2}, ""},
		// The packed arm: a modern device with packed=on, which the kernel
		// driver (K, S) and the agent and library (A, G, --ring auto) all
		// take, against uio-1cpu's split ring.
		{"uio", Options{Packed: true}, "uio", []int{1}, "-packed"},
	} {
		for _, cpus := range c.cpus {
			b.Run(fmt.Sprintf("%s-%dcpu%s", c.name, cpus, c.suffix), func(b *testing.B) {
				opts := c.opts
				opts.CPUs = cpus
				runSuite(b, opts, c.bind, cfg)
			})
		}
	}
}

// Environment variables that size the benchmark (a smoke run:
// VSERIAL_BENCH_MIB=1 VSERIAL_BENCH_RTTS=50 VSERIAL_BENCH_ROUNDS=1).
const (
	EnvBenchMiB    = "VSERIAL_BENCH_MIB"
	EnvBenchRTTs   = "VSERIAL_BENCH_RTTS"
	EnvBenchRounds = "VSERIAL_BENCH_ROUNDS"
	// EnvBenchReport names a file the report is appended to.
	EnvBenchReport = "VSERIAL_BENCH_REPORT"
	// EnvBenchAgentArgs adds `run` flags (split at spaces) to every agent
	// the benchmark starts, e.g. "--poll off", to compare policies. Its
	// --poll also sets the G arm's polling (vserial.Options.Poll).
	EnvBenchAgentArgs = "VSERIAL_BENCH_AGENT_ARGS"
	// EnvBenchQEMUTrace, when 1, counts QEMU's chardev reads of each
	// host→guest transfer (trace event virtio_console_chr_read); each
	// read then costs QEMU a write to its log, so the rates suffer.
	EnvBenchQEMUTrace = "VSERIAL_BENCH_QEMU_TRACE"
	// EnvBenchSchedTrace names a host directory: one phase of each round
	// (EnvBenchTracePhase) then runs under the guest kernel's scheduler
	// trace (sched_switch, sched_wakeup, interrupts), saved there as
	// trace-NN-ARM-PHASE.txt. Small sizes (VSERIAL_BENCH_RTTS=300,
	// VSERIAL_BENCH_MIB=4) keep the traces readable.
	EnvBenchSchedTrace = "VSERIAL_BENCH_SCHEDTRACE"
	// EnvBenchTracePhase is the phase EnvBenchSchedTrace traces: rtt (the
	// default), h2g or g2h.
	EnvBenchTracePhase = "VSERIAL_BENCH_TRACE_PHASE"
	// EnvBenchBAgent names a vserial-agent binary on the host (built from
	// another commit, say) to run as a fifth arm, B, in the main rounds
	// beside A, with the same flags: two builds compared in one boot.
	EnvBenchBAgent = "VSERIAL_BENCH_B_AGENT"
	// EnvBenchClient chooses the guest clients of the K, S and A arms:
	// "c" (the default; "raw" is the same) uses blocking descriptors and
	// system calls that Go's runtime does not see, as a client written in
	// C would (qemu-ga, socat); "go" uses Go's poller, as a Go program on
	// net.Conn or os.File would. The G arm holds its port in-process
	// either way.
	EnvBenchClient = "VSERIAL_BENCH_CLIENT"
)

type benchConfig struct {
	Bytes  int64 // each way, per round, on the main port
	RTTs   int   // per round
	Rounds int   // measured rounds per arm, after one warm-up round
	Trace  bool  // count QEMU's chardev reads host→guest
	// SchedTrace: a directory for the guest's scheduler traces of one
	// phase of each round ("": none).
	SchedTrace string
	// TracePhase: the phase traced (EnvBenchTracePhase).
	TracePhase string
	// RawClient: the K, S and A clients use blocking descriptors and
	// raw system calls (EnvBenchClient).
	RawClient bool
	// BAgent: a host path of the B arm's agent binary ("": no B arm).
	BAgent string
}

// benchAgentB is where the B arm's agent goes in the guest.
const benchAgentB = "/bin/vserial-agent-b"

// arms are the main rounds' arms: K, S, A, G, and B with EnvBenchBAgent.
func (s *suite) arms() string {
	if s.cfg.BAgent != "" {
		return "KSAGB"
	}
	return "KSAG"
}

func benchConfigFromEnv() (benchConfig, error) {
	num := func(name string, def int) (int, error) {
		v := os.Getenv(name)
		if v == "" {
			return def, nil
		}
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			return 0, fmt.Errorf("%s=%q: want a positive integer", name, v)
		}
		return n, nil
	}
	mib, err1 := num(EnvBenchMiB, 16)
	rtts, err2 := num(EnvBenchRTTs, 1000)
	rounds, err3 := num(EnvBenchRounds, 5)
	trace := os.Getenv(EnvBenchQEMUTrace) == "1"
	var err4 error
	raw := true
	switch v := os.Getenv(EnvBenchClient); v {
	case "", "c", "raw":
	case "go":
		raw = false
	default:
		err4 = fmt.Errorf("%s=%q: want c or go", EnvBenchClient, v)
	}
	var err5 error
	bAgent := os.Getenv(EnvBenchBAgent)
	if bAgent != "" {
		if fi, err := os.Stat(bAgent); err != nil || !fi.Mode().IsRegular() {
			err5 = fmt.Errorf("%s=%q: want an agent binary (%v)", EnvBenchBAgent, bAgent, err)
		}
	}
	var err6 error
	phase := os.Getenv(EnvBenchTracePhase)
	switch phase {
	case "":
		phase = "rtt"
	case "rtt", "h2g", "g2h":
	default:
		err6 = fmt.Errorf("%s=%q: want rtt, h2g or g2h", EnvBenchTracePhase, phase)
	}
	cfg := benchConfig{Bytes: int64(mib) << 20, RTTs: rtts, Rounds: rounds, Trace: trace,
		SchedTrace: os.Getenv(EnvBenchSchedTrace), TracePhase: phase, RawClient: raw, BAgent: bAgent}
	return cfg, errors.Join(err1, err2, err3, err4, err5, err6)
}

const (
	benchPorts    = 8
	socatSocket   = "/tmp/socat.sock"
	calibPings    = 1000
	calibIters    = 100000
	trickleCount  = 3000 // one per ms: 3 s
	trickleSettle = time.Second
	trickleWindow = 1500 * time.Millisecond
	idleWindow    = 5 * time.Second
)

// suite is one boot's benchmark.
type suite struct {
	b     *testing.B
	ctx   context.Context
	g     *Guest
	cfg   benchConfig
	bind  string   // the agent's --bind
	addr  string   // the function's PCI address
	names []string // port names; names[0] is the main port
	conns []*net.UnixConn
	out   strings.Builder // the report, logged at the end
	// traces counts the scheduler traces saved (EnvBenchSchedTrace).
	traces int
}

func runSuite(b *testing.B, opts Options, bind string, cfg benchConfig) {
	s := &suite{b: b, cfg: cfg, bind: bind}
	for i := range benchPorts {
		name := benchPort
		if i > 0 {
			name += "." + strconv.Itoa(i+1)
		}
		s.names = append(s.names, name)
		opts.Ports = append(opts.Ports, Port{Name: name})
	}
	opts.MaxPorts = benchPorts + 1
	opts.Socat = true
	opts.Files = append(opts.Files, BuildAgent(b))
	if cfg.BAgent != "" {
		opts.Files = append(opts.Files, File{Dst: benchAgentB, Src: cfg.BAgent, Mode: 0o755})
	}
	s.g = Boot(b, opts)
	ctx, cancel := context.WithTimeout(b.Context(), 100*time.Minute)
	defer cancel()
	s.ctx = ctx
	kernelPorts(b, s.g) // loads virtio_pci and virtio_console
	if opts.Packed {
		// The kernel driver took the packed ring (the agent and the
		// library take it too, with --ring auto): the K and S arms
		// really run on it.
		checkGuestFeature(ctx, b, s.g, "VIRTIO_F_RING_PACKED")
	}
	addrs, err := s.functions()
	if err != nil || len(addrs) != 1 {
		b.Fatalf("want one function on virtio-pci, got %v (%v)", addrs, err)
	}
	s.addr = addrs[0]
	for _, n := range s.names {
		s.conns = append(s.conns, s.g.DialPort(b, n))
	}
	client := "C-like (blocking descriptors, raw system calls)"
	if !cfg.RawClient {
		client = "Go (the runtime's poller)"
	}
	fmt.Fprintf(&s.out, "%s, %d vCPU, agent --bind %s, function %s; %d MiB each way and %d round trips per round, %d rounds per arm after a warm-up; K, S and A clients: %s\n",
		b.Name(), max(opts.CPUs, 1), bind, s.addr, cfg.Bytes>>20, cfg.RTTs, cfg.Rounds, client)

	// A failed run still shows what it measured up to the failure.
	published := false
	defer func() {
		if !published {
			fmt.Printf("==== %s (incomplete: the run failed)\n%s", b.Name(), s.out.String())
		}
	}()
	b.ResetTimer()
	cal0 := s.calibrate("before")
	main := s.mainRounds()
	s.multiRounds()
	s.trickles()
	s.idle()
	cal1 := s.calibrate("after")
	b.StopTimer()
	s.publish(s.summary(main, cal0, cal1))
	published = true
}

// publish writes the whole report to standard output (the testing
// package keeps only the first ten lines of a benchmark's log) and, when
// VSERIAL_BENCH_REPORT names a file, appends it there; the summary table
// also goes to the benchmark's log.
func (s *suite) publish(table string) {
	report := fmt.Sprintf("==== %s (%s)\n%s", s.b.Name(), time.Now().UTC().Format(time.RFC3339), s.out.String())
	appendBenchReport(s.b, report)
	s.b.Log(table)
}

// appendBenchReport writes a benchmark's report to standard output and,
// when VSERIAL_BENCH_REPORT names a file, appends it there.
func appendBenchReport(b *testing.B, report string) {
	fmt.Print(report)
	if name := os.Getenv(EnvBenchReport); name != "" {
		f, err := os.OpenFile(name, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err == nil {
			_, err = f.WriteString(report)
			err = errors.Join(err, f.Close())
		}
		if err != nil {
			b.Errorf("%s: %v", EnvBenchReport, err)
		}
	}
}

// functions lists the PCI functions the in-kernel virtio-pci driver holds.
func (s *suite) functions() ([]string, error) {
	out, err := s.g.Run(s.ctx, "ls", "/sys/bus/pci/drivers/virtio-pci")
	var addrs []string
	for _, name := range strings.Fields(out) {
		if strings.Count(name, ":") == 2 {
			addrs = append(addrs, name)
		}
	}
	return addrs, err
}

func (s *suite) printf(format string, args ...any) { fmt.Fprintf(&s.out, format, args...) }

// hostLoad is the host's 1-minute load average, for the round lines.
func hostLoad() string {
	b, _ := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); len(f) > 0 {
		return f[0]
	}
	return "?"
}

// ---- calibration ----

type calibration map[string]float64

func (s *suite) calibrate(when string) calibration {
	out, err := s.g.Run(s.ctx, "calib", strconv.Itoa(calibPings), strconv.Itoa(calibIters))
	if err != nil {
		s.b.Fatalf("calibration: %v", err)
	}
	c := calibration{}
	for k, v := range ParseKV(out) {
		if x, err := strconv.ParseFloat(v, 64); err == nil {
			c[k] = x
		}
	}
	s.printf("calibration (%s): getppid %.2f µs; copy %.2f µs/KiB, through a pipe %.2f µs/KiB, through a Unix socket %.2f µs/KiB; 1-byte round trip p50 (mean): processes over a Unix socket %.0f µs (%.0f), over pipes %.0f µs (%.0f); threads over a Unix socket %.0f µs (%.0f), over pipes %.0f µs (%.0f); processes over a Unix socket through Go's poller %.0f µs (%.0f)\n",
		when, c["getppid_us"], c["copy_us_per_kib"], c["pipecopy_us_per_kib"], c["unixcopy_us_per_kib"],
		c["proc_unix_p50_us"], c["proc_unix_mean_us"], c["proc_pipe_p50_us"], c["proc_pipe_mean_us"],
		c["thread_unix_p50_us"], c["thread_unix_mean_us"], c["thread_pipe_p50_us"], c["thread_pipe_mean_us"],
		c["proc_unix_go_p50_us"], c["proc_unix_go_mean_us"])
	return c
}

// ---- arms ----

// session is one arm set up in the guest: the paths a guest program
// opens for each port, and what runs for it.
type session struct {
	arm   byte
	paths []string // per port; for S only the main port's is the relay
	agent *Proc    // A
	socat *Proc    // S
}

// pid is the process whose CPU time and context switches are counted:
// the agent's, none for the other arms.
func (se *session) pid() int {
	if se.agent != nil {
		return se.agent.Pid
	}
	return 0
}

// open sets up an arm. For A, extra are more `run` flags; an agent that
// exits at once (a flag it does not know) gives ErrAgentExited with its
// output.
func (s *suite) open(arm byte, extra ...string) (*session, error) {
	se := &session{arm: arm}
	if arm == 'A' || arm == 'B' {
		path := AgentPath
		if arm == 'B' {
			path = benchAgentB
		}
		args := []string{"--log-level", "info", "--bind", s.bind, "--device", s.addr}
		args = append(args, strings.Fields(os.Getenv(EnvBenchAgentArgs))...)
		args = append(args, extra...)
		p, err := StartAgentAt(s.ctx, s.g, path, args...)
		if err != nil {
			return nil, err
		}
		se.agent = p
		for _, n := range s.names {
			se.paths = append(se.paths, AgentSocket(n))
		}
		if err := s.waitAgent(p, se.paths); err != nil {
			return nil, err
		}
		return se, nil
	}
	devs, err := s.vports()
	if err != nil {
		return nil, err
	}
	for _, n := range s.names {
		se.paths = append(se.paths, devs[n])
	}
	if arm == 'G' {
		// Each guest program takes the function from virtio-pci itself.
		se.paths = se.paths[:0]
		poll := benchPoll(strings.Fields(os.Getenv(EnvBenchAgentArgs)))
		for _, n := range s.names {
			se.paths = append(se.paths, wire.VserialPath(s.bind, s.addr, n, poll))
		}
		return se, nil
	}
	if arm == 'S' {
		p, err := s.g.Start(s.ctx, SocatPath, "UNIX-LISTEN:"+socatSocket+",fork,unlink-early", se.paths[0])
		if err != nil {
			return nil, err
		}
		se.socat = p
		if err := s.g.WaitPath(s.ctx, socatSocket, 30*time.Second); err != nil {
			return nil, fmt.Errorf("socat: %w", err)
		}
		se.paths[0] = socatSocket
	}
	return se, nil
}

// benchPoll is the value of --poll in run flags, "" if none.
func benchPoll(args []string) string {
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, "--poll="); ok {
			return v
		}
		if a == "--poll" && i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}

// errAgentExited is an agent that stopped before it published its
// sockets.
type errAgentExited struct {
	err    error
	output string
}

func (e *errAgentExited) Error() string {
	return fmt.Sprintf("vserial-agent exited before publishing its ports: %v\n%s", e.err, e.output)
}

func (s *suite) waitAgent(p *Proc, paths []string) error {
	deadline := time.Now().Add(60 * time.Second)
	for _, sock := range paths {
		for {
			err := s.g.WaitPath(s.ctx, sock, time.Second)
			if err == nil {
				break
			}
			if p.Exited() {
				out, werr := p.Wait(s.ctx)
				return &errAgentExited{werr, out}
			}
			if s.ctx.Err() != nil || time.Now().After(deadline) {
				_ = p.Signal(s.ctx, 15)
				out, _ := p.Wait(s.ctx)
				return fmt.Errorf("vserial-agent published no %s: %v\n%s", sock, err, out)
			}
		}
	}
	return nil
}

// vports waits until the in-kernel driver shows every port (after the
// agent gave the function back, ports come up one by one) and returns
// name → device.
func (s *suite) vports() (map[string]string, error) {
	deadline := time.Now().Add(60 * time.Second)
	for {
		out, err := s.g.Run(s.ctx, "vports")
		devs := map[string]string{}
		for line := range strings.Lines(out) {
			if f := strings.Fields(line); len(f) >= 2 {
				devs[f[0]] = f[1]
			}
		}
		missing := 0
		for _, n := range s.names {
			if devs[n] == "" {
				missing++
			}
		}
		if err == nil && missing == 0 {
			return devs, nil
		}
		if time.Now().After(deadline) || s.ctx.Err() != nil {
			return nil, fmt.Errorf("the in-kernel driver shows %d of %d ports (%v): %s", len(s.names)-missing, len(s.names), err, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// settle waits, for S, until socat's relay of the last connection has
// exited: the device is open once at a time, and the next connection's
// relay must be able to open it.
func (s *suite) settle(se *session) error {
	if se.socat == nil {
		return nil
	}
	_, err := s.g.Run(s.ctx, "wait-nochild", strconv.Itoa(se.socat.Pid), "30")
	return err
}

// close stops what open started. After the agent (and the Go library's
// programs) it makes sure the function is back on virtio-pci.
func (s *suite) close(se *session) error {
	switch {
	case se.arm == 'G':
		return s.backToVirtioPCI("the Go library")
	case se.socat != nil:
		if err := s.settle(se); err != nil {
			return err
		}
		if err := se.socat.Signal(s.ctx, 15); err != nil {
			return err
		}
		_, _ = se.socat.Wait(s.ctx) // killed by the signal: not an error
	case se.agent != nil:
		if err := se.agent.Signal(s.ctx, 15); err != nil {
			return err
		}
		if out, err := se.agent.Wait(s.ctx); err != nil {
			return fmt.Errorf("vserial-agent exit: %v\n%s", err, out)
		}
		return s.backToVirtioPCI("the agent")
	}
	return nil
}

// backToVirtioPCI binds the function to virtio-pci again if who left it
// elsewhere.
func (s *suite) backToVirtioPCI(who string) error {
	drv, _ := s.g.Run(s.ctx, "readlink", "/sys/bus/pci/devices/"+s.addr+"/driver")
	if path.Base(strings.TrimSpace(drv)) != "virtio-pci" {
		if _, err := s.g.Run(s.ctx, "write", "/sys/bus/pci/drivers/virtio-pci/bind", s.addr); err != nil {
			return fmt.Errorf("%s left %s on %q; binding virtio-pci: %w", who, s.addr, drv, err)
		}
	}
	return nil
}

// snap reads the counters of an arm between two phases: for the phase
// that ends (end) and for the one that begins (begin). They are the
// agent's CPU time and context switches, the device's interrupt lines
// and, for A, every "counters" object in `vserial-agent list --json`.
// The agent answers list itself, so its CPU is read before and after the
// query, and the query's cost falls in neither phase. A failure costs the
// counters, not the run.
func (s *suite) snap(se *session) (end, begin counterSet) {
	proc := func() counterSet {
		out, err := s.g.Run(s.ctx, "procsnap", strconv.Itoa(se.pid()), s.addr)
		if err != nil {
			s.printf("  (procsnap: %v)\n", err)
		}
		return procCounters(out)
	}
	end = proc()
	if se.agent == nil {
		return end, end
	}
	list := s.agentCounters()
	begin = proc()
	maps.Copy(end, list)
	maps.Copy(begin, list)
	return end, begin
}

// agentCounters reads every "counters" object of `vserial-agent list
// --json`.
func (s *suite) agentCounters() counterSet {
	js, err := s.g.Run(s.ctx, AgentPath, "list", "--json", "--socket-dir", AgentSocketDir)
	if err != nil {
		s.printf("  (list --json: %v)\n", err)
		return nil
	}
	var raw json.RawMessage // the first JSON value; anything after it is log
	if err := json.NewDecoder(strings.NewReader(js)).Decode(&raw); err != nil {
		s.printf("  (list --json: %v)\n", err)
		return nil
	}
	c, err := listCounters(raw)
	if err != nil {
		s.printf("  (%v)\n", err)
	}
	return c
}

// ---- main rounds ----

type roundResult struct {
	arm      byte
	h2g, g2h float64   // MB/s
	rtt      []float64 // µs, every sample
	// deltas of the counters over each phase: host→guest, guest→host,
	// round trips
	phases [3]counterSet
	// QEMU's threads over each transfer, sampled on the host
	h2gQEMU, g2hQEMU ThreadLoad
	h2gReads         ReadSizes // with VSERIAL_BENCH_QEMU_TRACE=1
}

// abba is the order of the arms in round r (0 is the warm-up): the arms
// as given, then reversed, and so on, so that each arm is as often early
// as late and each round holds one measurement of every arm, side by
// side.
func abba(arms string, r int) string {
	if r%2 == 0 {
		return arms
	}
	b := []byte(arms)
	slices.Reverse(b)
	return string(b)
}

func (s *suite) mainRounds() map[byte][]roundResult {
	res := map[byte][]roundResult{}
	s.printf("\nmain port, one arm at a time (host load average at the start of each round in brackets):\n")
	for r := 0; r <= s.cfg.Rounds; r++ {
		for _, arm := range []byte(abba(s.arms(), r)) {
			load := hostLoad()
			se, err := s.open(arm)
			if err != nil {
				s.b.Fatalf("round %d %c: %v", r, arm, err)
			}
			rr, err := s.measure(se)
			if err != nil {
				s.b.Fatalf("round %d %c: %v", r, arm, err)
			}
			if err := s.close(se); err != nil {
				s.b.Fatalf("round %d %c: %v", r, arm, err)
			}
			s.printf("  %-8s %c: host→guest %7.1f MB/s, guest→host %7.1f MB/s, round trip p50 %6.0f µs p99 %6.0f µs [load %s]\n",
				roundLabel(r), arm, rr.h2g, rr.g2h, percentile(rr.rtt, 50), percentile(rr.rtt, 99), load)
			s.printf("      %c qemu threads, host→guest: %s; guest→host: %s\n", arm, rr.h2gQEMU, rr.g2hQEMU)
			if s.cfg.Trace {
				s.printf("      %c chardev reads host→guest: %s\n", arm, rr.h2gReads)
			}
			if r > 0 {
				res[arm] = append(res[arm], rr)
				s.printPhases(rr)
			}
		}
	}
	return res
}

func roundLabel(r int) string {
	if r == 0 {
		return "warm-up"
	}
	return fmt.Sprintf("round %d", r)
}

// traced runs one phase of a round (h2g, g2h or rtt) and, when it is
// the phase cfg.TracePhase names and cfg.SchedTrace is set, under the
// guest's scheduler trace, saved as the next trace-NN-ARM-PHASE.txt in
// cfg.SchedTrace.
func (s *suite) traced(arm byte, phase string, run func() error) error {
	if s.cfg.SchedTrace == "" || s.cfg.TracePhase != phase {
		return run()
	}
	if _, err := s.g.Run(s.ctx, "schedtrace", "start"); err != nil {
		return fmt.Errorf("scheduler trace: %w", err)
	}
	runErr := run()
	out, err := s.g.Run(s.ctx, "schedtrace", "stop")
	if err = errors.Join(runErr, err); err != nil {
		return err
	}
	if err := os.MkdirAll(s.cfg.SchedTrace, 0o755); err != nil {
		return err
	}
	s.traces++
	name := filepath.Join(s.cfg.SchedTrace, fmt.Sprintf("trace-%02d-%c-%s.txt", s.traces, arm, phase))
	return os.WriteFile(name, []byte(out), 0o644)
}

// measure runs one round on the main port: host→guest, guest→host, round
// trips, reading the counters before and after each.
func (s *suite) measure(se *session) (roundResult, error) {
	rr := roundResult{arm: se.arm}
	conn, p := s.conns[0], se.paths[0]
	_, b0 := s.snap(se)
	var trace *ChrReadTrace
	if s.cfg.Trace {
		var err error
		if trace, err = StartChrReadTrace(s.ctx, s.g); err != nil {
			return rr, fmt.Errorf("trace: %w", err)
		}
	}
	var tr Transfer
	err := s.traced(se.arm, "h2g", func() (err error) {
		tr, err = benchToGuest(s.ctx, s.g, conn, p, s.cfg.Bytes, s.cfg.RawClient)
		return err
	})
	if err != nil {
		return rr, fmt.Errorf("host→guest: %w", err)
	}
	if err := s.nudged(se.arm, "host→guest", tr.Nudges); err != nil {
		return rr, err
	}
	rr.h2g, rr.h2gQEMU = tr.MBps, tr.QEMU
	if trace != nil {
		reads, err := trace.Stop(s.ctx)
		if err != nil {
			return rr, fmt.Errorf("trace: %w", err)
		}
		port, _ := s.g.Port(s.names[0])
		rr.h2gReads = reads[port.Nr]
	}
	if err := s.settle(se); err != nil {
		return rr, err
	}
	e1, b1 := s.snap(se)
	err = s.traced(se.arm, "g2h", func() (err error) {
		tr, err = benchFromGuest(s.ctx, s.g, conn, p, s.cfg.Bytes, 7, s.cfg.RawClient)
		return err
	})
	if err != nil {
		return rr, fmt.Errorf("guest→host: %w", err)
	}
	rr.g2h, rr.g2hQEMU = tr.MBps, tr.QEMU
	if err := s.settle(se); err != nil {
		return rr, err
	}
	e2, b2 := s.snap(se)
	err = s.traced(se.arm, "rtt", func() (err error) {
		_, rr.rtt, err = PingPongSamples(s.ctx, s.g, conn, p, s.cfg.RTTs, s.cfg.RawClient)
		return err
	})
	if err != nil {
		return rr, fmt.Errorf("round trips: %w", err)
	}
	if err := s.settle(se); err != nil {
		return rr, err
	}
	e3, _ := s.snap(se)
	rr.phases = [3]counterSet{e1.sub(b0), e2.sub(b1), e3.sub(b2)}
	return rr, nil
}

// printPhases prints a round's counters: per MiB for the transfers, per
// round trip for the round trips.
func (s *suite) printPhases(rr roundResult) {
	mib := float64(s.cfg.Bytes) / (1 << 20)
	for i, ph := range []struct {
		name string
		per  float64
		unit string
	}{{"host→guest", mib, "MiB"}, {"guest→host", mib, "MiB"}, {"round trips", float64(s.cfg.RTTs), "round trip"}} {
		s.printCounters("      ", fmt.Sprintf("%c %s, per %s: ", rr.arm, ph.name, ph.unit), rr.phases[i], ph.per)
	}
}

// formatCounters prints every counter divided by per. The first line has
// the process's CPU and context switches and the interrupt lines; then
// the agent's counters that moved, by owner of the "counters" object (a
// port, a device), the field names without the owner's path. Fields with
// the same figure in every owner (a device's counters repeated on each of
// its ports) come once, on a line of their own; owners left with the same
// figures share a line.
func formatCounters(c counterSet, per float64) []string {
	keys := c.keys()
	rank := map[string]int{"cpu_ms": 0, "sched_ms": 1, "vcsw": 2, "ivcsw": 3, "sysmon_vcsw": 4}
	order := func(k string) int {
		if r, ok := rank[k]; ok {
			return r
		}
		if strings.HasPrefix(k, "irq ") {
			return 5
		}
		return 6
	}
	slices.SortStableFunc(keys, func(a, b string) int { return order(a) - order(b) })
	type field struct{ name, text string }
	var base, owners []string
	fields := map[string][]field{}
	for _, k := range keys {
		v := c[k]
		owner, name, ok := strings.Cut(k, ".counters.")
		if !ok {
			base = append(base, fmt.Sprintf("%s %.4g", k, v/per))
			continue
		}
		if v == 0 {
			continue
		}
		if fields[owner] == nil {
			owners = append(owners, owner)
		}
		fields[owner] = append(fields[owner], field{name, fmt.Sprintf("%s %.4g", name, v/per)})
	}
	lines := []string{strings.Join(base, ", ")}
	// Fields every owner has with the same figure.
	common := map[string]bool{}
	if len(owners) > 1 {
		count := map[string]int{}
		for _, o := range owners {
			for _, f := range fields[o] {
				count[f.text]++
			}
		}
		var shared []string
		for _, f := range fields[owners[0]] {
			if count[f.text] == len(owners) {
				common[f.text] = true
				shared = append(shared, f.text)
			}
		}
		if len(shared) > 0 {
			lines = append(lines, fmt.Sprintf("in all %d: %s", len(owners), strings.Join(shared, ", ")))
		}
	}
	var figures []string
	sharing := map[string][]string{}
	for _, o := range owners {
		var rest []string
		for _, f := range fields[o] {
			if !common[f.text] {
				rest = append(rest, f.text)
			}
		}
		if len(rest) == 0 {
			continue
		}
		f := strings.Join(rest, ", ")
		if sharing[f] == nil {
			figures = append(figures, f)
		}
		sharing[f] = append(sharing[f], o)
	}
	for _, f := range figures {
		lines = append(lines, strings.Join(sharing[f], " = ")+": "+f)
	}
	return lines
}

// printCounters prints formatCounters' lines after head, the owners'
// lines indented below it.
func (s *suite) printCounters(indent, head string, c counterSet, per float64) {
	lines := formatCounters(c, per)
	s.printf("%s%s%s\n", indent, head, lines[0])
	for _, l := range lines[1:] {
		s.printf("%s    %s\n", indent, l)
	}
}

// ---- eight ports at once ----

func (s *suite) multiRounds() {
	perPort := max(s.cfg.Bytes/2, 64<<10)
	s.printf("\n%d ports at once, %d KiB per port each way, aggregate MB/s:\n", benchPorts, perPort>>10)
	agg := map[string][]float64{}
	for r := 0; r <= s.cfg.Rounds; r++ {
		arms := "KA"
		if s.cfg.BAgent != "" {
			arms = "KAB"
		}
		for _, arm := range []byte(abba(arms, r)) {
			se, err := s.open(arm)
			if err != nil {
				s.b.Fatalf("8 ports, round %d %c: %v", r, arm, err)
			}
			_, b0 := s.snap(se)
			h2g, err := s.multiToGuest(se, perPort)
			if err != nil {
				s.b.Fatalf("8 ports, round %d %c: host→guest: %v", r, arm, err)
			}
			e1, b1 := s.snap(se)
			g2h, err := s.multiFromGuest(se, perPort)
			if err != nil {
				s.b.Fatalf("8 ports, round %d %c: guest→host: %v", r, arm, err)
			}
			e2, _ := s.snap(se)
			if err := s.close(se); err != nil {
				s.b.Fatalf("8 ports, round %d %c: %v", r, arm, err)
			}
			s.printf("  %-8s %c: host→guest %7.1f MB/s, guest→host %7.1f MB/s\n", roundLabel(r), arm, h2g, g2h)
			if r > 0 && se.agent != nil {
				// The agent's counters per MiB of all eight ports.
				mib := float64(perPort*benchPorts) / (1 << 20)
				s.printCounters("      ", fmt.Sprintf("%c host→guest, per MiB: ", arm), e1.sub(b0), mib)
				s.printCounters("      ", fmt.Sprintf("%c guest→host, per MiB: ", arm), e2.sub(b1), mib)
			}
			if r > 0 {
				agg[string(arm)+"h2g"] = append(agg[string(arm)+"h2g"], h2g)
				agg[string(arm)+"g2h"] = append(agg[string(arm)+"g2h"], g2h)
			}
		}
	}
	for _, dir := range []string{"h2g", "g2h"} {
		k, a := agg["K"+dir], agg["A"+dir]
		sp := spreadOf(ratios(a, k))
		s.printf("  %s: K %.1f MB/s, A %.1f MB/s (medians); A/K %s\n", dir, median(k), median(a), sp)
		s.b.ReportMetric(sp.Med, "8port-"+dir+"-A/K")
		if bb := agg["B"+dir]; len(bb) > 0 {
			s.printf("  %s: B %.1f MB/s (median); A/B %s\n", dir, median(bb), spreadOf(ratios(a, bb)))
		}
	}
}

// nudged reports a host→guest phase that stalled in QEMU until its main
// loop was woken (nudge.go): a note for the kernel driver's arms (K, S),
// whose driver does not notify the receive queue after PORT_OPEN, and an
// error for vserial's, whose driver does.
func (s *suite) nudged(arm byte, phase string, nudges int) error {
	if nudges == 0 {
		return nil
	}
	s.printf("      %c %s: stalled in QEMU; its main loop woken %d times (nudge.go)\n", arm, phase, nudges)
	if arm != 'K' && arm != 'S' {
		return fmt.Errorf("%s on vserial's arm %c stalled until QEMU's main loop was woken (%d nudges)", phase, arm, nudges)
	}
	return nil
}

// multiToGuest has the guest read n bytes from every port at once (msink)
// while the host writes them, and returns the guest's aggregate MB/s.
func (s *suite) multiToGuest(se *session, n int64) (float64, error) {
	argv := append(clientArgs(s.cfg.RawClient, "msink"), strconv.FormatInt(n, 10))
	p, err := s.g.Start(s.ctx, append(argv, se.paths...)...)
	if err != nil {
		return 0, err
	}
	block := patternBlock(3)
	var wg sync.WaitGroup
	errs := make([]error, len(s.conns))
	watch := watchStall(s.ctx, s.g)
	var writing atomic.Int32
	writing.Store(int32(len(s.conns)))
	for i, c := range s.conns {
		done := deadline(s.ctx, c)
		wg.Go(func() {
			defer done()
			defer func() {
				if writing.Add(-1) == 0 {
					watch.finished.Store(true)
				}
			}()
			for left := n; left > 0; {
				k := min(int64(len(block)), left)
				if _, err := c.Write(block[:k]); err != nil {
					errs[i] = err
					return
				}
				left -= k
				watch.moved.Add(k)
			}
		})
	}
	out, err := p.Wait(s.ctx)
	nudges := watch.stop()
	if err := s.collect(err, &wg, errs); err != nil {
		return 0, err
	}
	if err := s.nudged(se.arm, "8 ports host→guest", nudges); err != nil {
		return 0, err
	}
	return strconv.ParseFloat(ParseKV(out)["mbps"], 64)
}

// collect waits for the host side of a phase on every port (wg, each
// goroutine's error in errs); when the guest side failed (guestErr), it
// first unblocks them.
func (s *suite) collect(guestErr error, wg *sync.WaitGroup, errs []error) error {
	if guestErr != nil {
		for _, c := range s.conns {
			_ = c.SetDeadline(time.Unix(1, 0))
		}
	}
	wg.Wait()
	return errors.Join(guestErr, errors.Join(errs...))
}

// multiFromGuest has the guest write n bytes to every port at once
// (msource) and returns the aggregate MB/s the host measured from the
// first byte on any port to the last on all, every byte checked.
func (s *suite) multiFromGuest(se *session, n int64) (float64, error) {
	const seed = 9
	block := patternBlock(seed)
	var wg sync.WaitGroup
	firsts, lasts := make([]time.Time, len(s.conns)), make([]time.Time, len(s.conns))
	errs := make([]error, len(s.conns))
	for i, c := range s.conns {
		done := deadline(s.ctx, c)
		wg.Go(func() {
			defer done()
			firsts[i], lasts[i], errs[i] = readBlocks(c, n, block, nil)
		})
	}
	argv := append(clientArgs(s.cfg.RawClient, "msource"), strconv.FormatInt(n, 10), strconv.Itoa(seed))
	_, err := s.g.Run(s.ctx, append(argv, se.paths...)...)
	if err := s.collect(err, &wg, errs); err != nil {
		return 0, err
	}
	first := slices.MinFunc(firsts, func(a, b time.Time) int { return a.Compare(b) })
	last := slices.MaxFunc(lasts, func(a, b time.Time) int { return a.Compare(b) })
	return float64(n) * float64(len(s.conns)) / last.Sub(first).Seconds() / 1e6, nil
}

// ---- trickle and idle ----

func (s *suite) trickles() {
	s.printf("\none-way trickle, 1 byte every ms, no replies; agent CPU per message over %v after %v:\n", trickleWindow, trickleSettle)
	var def float64
	for _, c := range []struct {
		name  string
		extra []string
	}{{"default", nil}, {"--poll off", []string{"--poll", "off"}}} {
		v, err := s.trickle('A', c.name, c.extra...)
		var exited *errAgentExited
		var usage *ExitError
		switch {
		case errors.As(err, &exited) && errors.As(exited.err, &usage) && usage.Code == 2 && c.extra != nil:
			// Exit status 2: a usage error, the flag is not there (yet).
			s.printf("  %s: skipped, the agent does not take it: %s\n", c.name, firstLine(exited.output))
			continue
		case err != nil:
			s.b.Fatalf("trickle (%s): %v", c.name, err)
		}
		if c.extra == nil {
			def = v
			s.b.ReportMetric(v, "trickle-cpu-µs/msg")
		} else {
			s.b.ReportMetric(v, "trickle-polloff-cpu-µs/msg")
			s.printf("  default/off %.2f×\n", def/v)
		}
	}
	if s.cfg.BAgent != "" {
		s.trickleAB(def)
	}
}

// trickleAB runs the default trickle through B and A again, alternated
// (B A A B after the A run of trickles, whose figure is a), and prints
// A/B of the CPU per message: the median of the three A runs over the
// median of the two B runs, with each run's figure.
func (s *suite) trickleAB(a float64) {
	as, bs := []float64{a}, []float64(nil)
	for _, arm := range []byte("BAAB") {
		v, err := s.trickle(arm, fmt.Sprintf("default, %c", arm))
		if err != nil {
			s.b.Fatalf("trickle (%c): %v", arm, err)
		}
		if arm == 'A' {
			as = append(as, v)
		} else {
			bs = append(bs, v)
		}
	}
	s.printf("  CPU per message, default: A %.0f µs %v, B %.0f µs %v; A/B %.2f×\n",
		median(as), roundAll(as), median(bs), roundAll(bs), median(as)/median(bs))
}

func roundAll(vs []float64) []float64 {
	out := make([]float64, len(vs))
	for i, v := range vs {
		out[i] = math.Round(v)
	}
	return out
}

func firstLine(s string) string {
	for line := range strings.Lines(s) {
		if line = strings.TrimSpace(line); line != "" {
			return line
		}
	}
	return ""
}

// trickle runs the trickle through an agent (arm A or B) started with
// extra and returns its CPU time per message in µs (from schedstat).
func (s *suite) trickle(arm byte, name string, extra ...string) (float64, error) {
	se, err := s.open(arm, extra...)
	if err != nil {
		return 0, err
	}
	conn := s.conns[0]
	var got atomic.Int64
	readErr := make(chan error, 1)
	done := deadline(s.ctx, conn)
	go func() {
		defer done()
		buf := make([]byte, 4096)
		for got.Load() < trickleCount {
			k, err := conn.Read(buf)
			got.Add(int64(k))
			if err != nil {
				readErr <- err
				return
			}
		}
		readErr <- nil
	}()
	p, err := s.g.Start(s.ctx, "trickle", se.paths[0], strconv.Itoa(trickleCount), "1000")
	if err != nil {
		return 0, err
	}
	time.Sleep(trickleSettle)
	_, c0 := s.snap(se)
	n0 := got.Load()
	time.Sleep(trickleWindow)
	n1 := got.Load()
	c1, _ := s.snap(se)
	if _, err := p.Wait(s.ctx); err != nil {
		return 0, err
	}
	select {
	case err = <-readErr:
	case <-time.After(30 * time.Second):
		_ = conn.SetDeadline(time.Unix(1, 0))
		err = errors.Join(errors.New("the last bytes did not arrive within 30 s"), <-readErr)
	}
	if err != nil {
		return 0, fmt.Errorf("host read after %d of %d bytes: %w", got.Load(), trickleCount, err)
	}
	if err := s.close(se); err != nil {
		return 0, err
	}
	msgs := float64(n1 - n0)
	d := c1.sub(c0)
	s.printCounters("  ", fmt.Sprintf("%s: %.0f messages in the window; per message: ", name, msgs), d, msgs)
	if msgs == 0 {
		return math.NaN(), nil
	}
	return d["sched_ms"] * 1e3 / msgs, nil
}

func (s *suite) idle() {
	se, err := s.open('A')
	if err != nil {
		s.b.Fatalf("idle: %v", err)
	}
	ready := "/tmp/idle-ready"
	hold, err := s.g.Start(s.ctx, append([]string{"hold", ready, "60"}, se.paths...)...)
	if err != nil {
		s.b.Fatalf("idle: %v", err)
	}
	if err := s.g.WaitPath(s.ctx, ready, 30*time.Second); err != nil {
		s.b.Fatalf("idle: clients: %v", err)
	}
	time.Sleep(500 * time.Millisecond)
	_, c0 := s.snap(se)
	time.Sleep(idleWindow)
	c1, _ := s.snap(se)
	_ = hold.Signal(s.ctx, 15)
	_, _ = hold.Wait(s.ctx) // killed: not an error
	if err := s.close(se); err != nil {
		s.b.Fatalf("idle: %v", err)
	}
	d := c1.sub(c0)
	s.printCounters("\n", fmt.Sprintf("idle, %d clients connected and the host connected, over %v: ", len(se.paths), idleWindow), d, 1)
	s.b.ReportMetric(d["cpu_ms"]/1e3, "idle-cpu-s")
}

// ---- summary ----

// throughputCeiling prints what a relay's throughput can be at most when
// the copy it adds is on the critical path, the throughput counterpart of
// the relay floor. A relay through a Unix socket copies every byte twice
// in the kernel (into the socket's buffer and out of it) where K copies
// it once, so it adds half a socket hop (unixcopy_us_per_kib / 2, mean of
// the two calibrations) to K's time per byte; process switches come on
// top. Where K and the relay are capped by QEMU (host→guest on uio, whose
// main loop reads 4 KiB per pass) the guest's copy can overlap QEMU's
// work and a relay can beat the figure.
func (s *suite) throughputCeiling(kh2g, kg2h, ah2g, ag2h float64, cal0, cal1 calibration) {
	hop := (cal0["unixcopy_us_per_kib"] + cal1["unixcopy_us_per_kib"]) / 2
	extra := hop / 2 / 1024 // µs per byte
	ceil := func(k float64) float64 { return 1 / (1/k + extra) }
	ch, cg := ceil(kh2g), ceil(kg2h)
	s.printf("relay ceiling = K's time per byte + one kernel copy (half a Unix-socket hop, %.2f µs/KiB): host→guest %.1f MB/s (%.2f× K; A %.2f× it), guest→host %.1f MB/s (%.2f× K; A %.2f× it)\n",
		hop/2, ch, ch/kh2g, ah2g/ch, cg, cg/kg2h, ag2h/cg)
	s.b.ReportMetric(ah2g/ch, "h2g-A/ceiling")
	s.b.ReportMetric(ag2h/cg, "g2h-A/ceiling")
}

// summary prints the table of the main rounds and the relay floor, and
// returns them in short for the benchmark's log (which keeps ten lines).
func (s *suite) summary(res map[byte][]roundResult, cal0, cal1 calibration) string {
	col := func(arm byte, f func(roundResult) float64) []float64 {
		var xs []float64
		for _, r := range res[arm] {
			xs = append(xs, f(r))
		}
		return xs
	}
	pooled := func(arm byte) []float64 {
		var xs []float64
		for _, r := range res[arm] {
			xs = append(xs, r.rtt...)
		}
		return xs
	}
	h2g := func(r roundResult) float64 { return r.h2g }
	g2h := func(r roundResult) float64 { return r.g2h }
	p50 := func(r roundResult) float64 { return percentile(r.rtt, 50) }
	p99 := func(r roundResult) float64 { return percentile(r.rtt, 99) }

	s.printf("\nsummary over %d rounds per arm (throughput: median of the rounds; round trips: percentiles of all samples pooled; ratios: median [min–max] of the per-round ratios):\n", s.cfg.Rounds)
	var table strings.Builder
	tw := tabwriter.NewWriter(&table, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "metric\tK\tS\tA\tG\tA/K\tA/S\tG/K\tG/S\t\n")
	metrics := []struct {
		name, key string
		f         func(roundResult) float64
	}{{"host→guest MB/s", "h2g", h2g}, {"guest→host MB/s", "g2h", g2h}, {"round trip p50 µs", "rtt-p50", p50}, {"round trip p99 µs", "rtt-p99", p99}}
	for _, m := range metrics {
		k, sv, a, gl := col('K', m.f), col('S', m.f), col('A', m.f), col('G', m.f)
		abs := func(arm byte, xs []float64) float64 {
			switch m.key {
			case "rtt-p50":
				return percentile(pooled(arm), 50)
			case "rtt-p99":
				return percentile(pooled(arm), 99)
			}
			return median(xs)
		}
		ak, as := spreadOf(ratios(a, k)), spreadOf(ratios(a, sv))
		gk, gs := spreadOf(ratios(gl, k)), spreadOf(ratios(gl, sv))
		fmt.Fprintf(tw, "%s\t%.1f\t%.1f\t%.1f\t%.1f\t%s\t%s\t%s\t%s\t\n", m.name, abs('K', k), abs('S', sv), abs('A', a), abs('G', gl), ak, as, gk, gs)
		s.b.ReportMetric(ak.Med, m.key+"-A/K")
		s.b.ReportMetric(as.Med, m.key+"-A/S")
		s.b.ReportMetric(gk.Med, m.key+"-G/K")
		s.b.ReportMetric(gs.Med, m.key+"-G/S")
	}
	k999, s999, a999, g999 := percentile(pooled('K'), 99.9), percentile(pooled('S'), 99.9), percentile(pooled('A'), 99.9), percentile(pooled('G'), 99.9)
	fmt.Fprintf(tw, "round trip p99.9 µs\t%.1f\t%.1f\t%.1f\t%.1f\t%.2f× (pooled)\t%.2f× (pooled)\t%.2f× (pooled)\t%.2f× (pooled)\t\n", k999, s999, a999, g999, a999/k999, a999/s999, g999/k999, g999/s999)
	_ = tw.Flush()
	s.out.WriteString(table.String())
	if len(res['B']) > 0 {
		var line []string
		for _, m := range metrics {
			a, bb := col('A', m.f), col('B', m.f)
			sp := spreadOf(ratios(a, bb))
			line = append(line, fmt.Sprintf("%s %.1f, A/B %s", m.name, median(bb), sp))
			s.b.ReportMetric(sp.Med, m.key+"-A/B")
		}
		s.printf("B (%s, medians of the rounds): %s\n", EnvBenchBAgent, strings.Join(line, "; "))
	}

	kp50 := percentile(pooled('K'), 50)
	proc := (cal0["proc_unix_p50_us"] + cal1["proc_unix_p50_us"]) / 2
	floor := kp50 + proc
	ap50, ap99, sp50 := percentile(pooled('A'), 50), percentile(pooled('A'), 99), percentile(pooled('S'), 50)
	// K's own p99 against the same floor: where the host's noise already
	// puts the kernel driver's tail above 1.5× it, no relay can be under.
	kp99 := percentile(pooled('K'), 99)
	floorLine := fmt.Sprintf("A p50 %.2f× the relay floor, A p99 %.2f×, S p50 %.2f×, K p99 %.2f×", ap50/floor, ap99/floor, sp50/floor, kp99/floor)
	goProc := (cal0["proc_unix_go_p50_us"] + cal1["proc_unix_go_p50_us"]) / 2
	s.printf("relay floor = K round trip p50 %.0f µs + process ping-pong p50 over a Unix socket %.0f µs (mean of the two calibrations) = %.0f µs; %s\n",
		kp50, proc, floor, floorLine)
	s.printf("  (with Go's poller on both sides of the ping-pong: %.0f µs, floor %.0f µs, A p50 %.2f× it)\n", goProc, kp50+goProc, ap50/(kp50+goProc))
	s.b.ReportMetric(ap50/floor, "rtt-p50-A/floor")
	s.b.ReportMetric(ap99/floor, "rtt-p99-A/floor")
	s.b.ReportMetric(sp50/floor, "rtt-p50-S/floor")
	s.b.ReportMetric(kp99/floor, "rtt-p99-K/floor")
	s.throughputCeiling(median(col('K', h2g)), median(col('K', g2h)), median(col('A', h2g)), median(col('A', g2h)), cal0, cal1)
	// The agent's CPU (utime+stime) per MiB and per round trip, medians
	// over its rounds.
	mib := float64(s.cfg.Bytes) / (1 << 20)
	cpu := func(phase int, per float64) float64 {
		return median(col('A', func(r roundResult) float64 { return r.phases[phase]["cpu_ms"] / per }))
	}
	s.b.ReportMetric(cpu(0, mib), "A-cpu-ms/MiB-h2g")
	s.b.ReportMetric(cpu(1, mib), "A-cpu-ms/MiB-g2h")
	s.b.ReportMetric(cpu(2, float64(s.cfg.RTTs))*1e3, "A-cpu-µs/rtt")
	s.qemuSummary(res)
	for _, arm := range []byte("KSAG") {
		s.b.ReportMetric(median(col(arm, h2g)), string(arm)+"-h2g-MB/s")
		s.b.ReportMetric(median(col(arm, g2h)), string(arm)+"-g2h-MB/s")
		s.b.ReportMetric(percentile(pooled(arm), 50), string(arm)+"-rtt-p50-µs")
	}
	return fmt.Sprintf("%s (%.0f µs); the full report is on standard output\n%s", floorLine, floor, table.String())
}
