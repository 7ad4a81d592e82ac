package qemu

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
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
//     with its default polling and with --poll off (and, with the B arm,
//     B and A again, alternated);
//  5. idle: the agent with eight connected clients and the host connected,
//     over 5 s;
//  6. the calibration again.
//
// docs/benchmarks.md explains every line of the output. This file has the
// suite and its calibration; the arms are in compare_arms_test.go, steps
// 2 to 5 in compare_rounds_test.go, compare_multi_test.go and
// compare_trickle_test.go, the summary in compare_summary_test.go.
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
	// EnvBenchBArgs adds `run` flags (split at spaces) to the B arm only,
	// after EnvBenchAgentArgs. Without EnvBenchBAgent, B is A's own build
	// with these flags: two settings compared in one boot.
	EnvBenchBArgs = "VSERIAL_BENCH_B_ARGS"
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
	// BAgent: a host path of the B arm's agent binary ("": A's build,
	// if there is a B arm at all).
	BAgent string
	// BArgs: more `run` flags for the B arm (EnvBenchBArgs).
	BArgs []string
}

// hasB reports whether the main rounds, the 8-port rounds and the trickle
// have a B arm: another build, other flags, or both.
func (c benchConfig) hasB() bool { return c.BAgent != "" || len(c.BArgs) > 0 }

// benchAgentB is where the B arm's agent goes in the guest.
const benchAgentB = "/bin/vserial-agent-b"

// arms are the main rounds' arms: K, S, A, G, and B when there is one (hasB).
func (s *suite) arms() string {
	if s.cfg.hasB() {
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
		SchedTrace: os.Getenv(EnvBenchSchedTrace), TracePhase: phase, RawClient: raw, BAgent: bAgent,
		BArgs: strings.Fields(os.Getenv(EnvBenchBArgs))}
	return cfg, errors.Join(err1, err2, err3, err4, err5, err6)
}

const (
	benchPorts    = 8
	socatSocket   = "/tmp/socat.sock"
	calibPings    = 1000
	roundPings    = 300 // calib-proc's round trips between main rounds
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
	// pings is the process ping-pong p50 (calib-proc) taken before the
	// first main round and after each: round r's relay floor uses the
	// mean of pings[r-1] and pings[r].
	pings []float64
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

// pingBetween measures the process ping-pong between two main rounds
// (calib-proc) and keeps it for those rounds' relay floors.
func (s *suite) pingBetween() {
	out, err := s.g.Run(s.ctx, "calib-proc", strconv.Itoa(roundPings))
	if err != nil {
		s.b.Fatalf("calib-proc: %v", err)
	}
	v, err := strconv.ParseFloat(ParseKV(out)["proc_unix_raw_p50_us"], 64)
	if err != nil || v <= 0 {
		s.b.Fatalf("calib-proc: no proc_unix_raw_p50_us in %q", out)
	}
	s.pings = append(s.pings, v)
	s.printf("  process ping-pong p50 %.0f µs\n", v)
}

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
	s.printf("calibration (%s): getppid %.2f µs; copy %.2f µs/KiB, through a pipe %.2f µs/KiB, through a Unix socket %.2f µs/KiB; 1-byte round trip p50 (mean): processes over a Unix socket %.0f µs (%.0f), over pipes %.0f µs (%.0f); threads over a Unix socket %.0f µs (%.0f), over pipes %.0f µs (%.0f); processes over a Unix socket through Go's poller %.0f µs (%.0f), on raw system calls %.0f µs (%.0f)\n",
		when, c["getppid_us"], c["copy_us_per_kib"], c["pipecopy_us_per_kib"], c["unixcopy_us_per_kib"],
		c["proc_unix_p50_us"], c["proc_unix_mean_us"], c["proc_pipe_p50_us"], c["proc_pipe_mean_us"],
		c["thread_unix_p50_us"], c["thread_unix_mean_us"], c["thread_pipe_p50_us"], c["thread_pipe_mean_us"],
		c["proc_unix_go_p50_us"], c["proc_unix_go_mean_us"], c["proc_unix_raw_p50_us"], c["proc_unix_raw_mean_us"])
	return c
}
