package qemu

import (
	"math"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestMedianAndPercentile(t *testing.T) {
	xs := []float64{5, 1, 4, 2, 3}
	if m := median(xs); m != 3 {
		t.Errorf("median = %v, want 3", m)
	}
	if m := median([]float64{4, 1, 3, 2}); m != 2.5 {
		t.Errorf("median of four = %v, want 2.5", m)
	}
	if !math.IsNaN(median(nil)) || !math.IsNaN(percentile(nil, 50)) {
		t.Error("no samples must give NaN")
	}
	var hundred []float64
	for i := 100; i >= 1; i-- {
		hundred = append(hundred, float64(i))
	}
	for _, c := range []struct{ p, want float64 }{{50, 50}, {99, 99}, {99.9, 100}, {100, 100}, {0.1, 1}} {
		if got := percentile(hundred, c.p); got != c.want {
			t.Errorf("p%v = %v, want %v", c.p, got, c.want)
		}
	}
	if !slices.Equal(xs, []float64{5, 1, 4, 2, 3}) {
		t.Error("median or percentile sorted its argument")
	}
}

func TestSpreadOfRatios(t *testing.T) {
	sp := spreadOf(ratios([]float64{2, 6, 3}, []float64{1, 2, 3, 99}))
	if sp != (spread{2, 1, 3}) {
		t.Errorf("spread = %+v", sp)
	}
	if got := sp.String(); got != "2.00× [1.00–3.00]" {
		t.Errorf("String = %q", got)
	}
}

func TestParseSamples(t *testing.T) {
	xs, err := parseSamples("12.5,3,400.1")
	if err != nil || !slices.Equal(xs, []float64{12.5, 3, 400.1}) {
		t.Errorf("parseSamples = %v, %v", xs, err)
	}
	for _, bad := range []string{"", "1,,2", "x"} {
		if _, err := parseSamples(bad); err == nil {
			t.Errorf("parseSamples(%q) accepted", bad)
		}
	}
}

// TestListCountersFindsAnyCountersObject pins that the benchmark reads the
// agent's counters whatever they are called and wherever they sit, and
// reads nothing when there are none.
func TestListCountersFindsAnyCountersObject(t *testing.T) {
	js := `{"functions":[{"addr":"0000:00:03.0","counters":{"resets":1}}],
	 "agent":{"running":true,"devices":[{"device":0,"counters":{"loop":{"passes":10,"sleeps":4},"kicks":7}}],
	  "ports":[{"name":"org.a","bytes_in":5,"counters":{"syscalls":{"readv":3},"spins":[1,2]}},
	           {"name":"","socket":"/run/vserial/vport0p2","counters":{"kicks":0,"label":"x"}},
	           {"counters":{"kicks":2}}]}}`
	c, err := listCounters([]byte(js))
	if err != nil {
		t.Fatal(err)
	}
	want := counterSet{
		"functions[0000:00:03.0].counters.resets":           1,
		"agent.devices[0].counters.loop.passes":             10,
		"agent.devices[0].counters.loop.sleeps":             4,
		"agent.devices[0].counters.kicks":                   7,
		"agent.ports[org.a].counters.syscalls.readv":        3,
		"agent.ports[org.a].counters.spins[0]":              1,
		"agent.ports[org.a].counters.spins[1]":              2,
		"agent.ports[/run/vserial/vport0p2].counters.kicks": 0,
		"agent.ports[2].counters.kicks":                     2,
		"agent.ports[org.a].bytes_in":                       5, // a port's byte counts too
	}
	if len(c) != len(want) {
		t.Errorf("got %d counters, want %d: %v", len(c), len(want), c)
	}
	for k, v := range want {
		if got, ok := c[k]; !ok || got != v {
			t.Errorf("%s = %v (present %v), want %v", k, got, ok, v)
		}
	}
	none, err := listCounters([]byte(`{"agent":{"ports":[{"name":"a","open":true}]}}`))
	if err != nil || len(none) != 0 {
		t.Errorf("without counters: %v, %v", none, err)
	}
	if _, err := listCounters([]byte("not json")); err == nil {
		t.Error("bad JSON accepted")
	}
}

func TestProcCountersAndDeltas(t *testing.T) {
	before := procCounters("utime_ticks=10 stime_ticks=5 sched_ns=2000000 vcsw=7 ivcsw=1 vcsw_t1=1 irq:11=100 irqname:11=IO-APIC_11-fasteoi_uio_pci_generic")
	after := procCounters("utime_ticks=12 stime_ticks=6 sched_ns=5000000 vcsw=9 ivcsw=1 vcsw_t1=4 irq:11=130 irqname:11=IO-APIC_11-fasteoi_uio_pci_generic irq:24=3 irqname:24=virtio0-input.0")
	d := after.sub(before)
	want := counterSet{"cpu_ms": 30, "sched_ms": 3, "vcsw": 2, "ivcsw": 0, "sysmon_vcsw": 3,
		"irq 11 IO-APIC_11-fasteoi_uio_pci_generic": 30, "irq 24 virtio0-input.0": 3}
	for k, v := range want {
		if math.Abs(d[k]-v) > 1e-9 {
			t.Errorf("%s = %v, want %v", k, d[k], v)
		}
	}
	if len(d) != len(want) {
		t.Errorf("deltas %v", d)
	}
	lines := formatCounters(counterSet{
		"p[a].counters.kicks": 0, "p[a].counters.spins": 4, "p[b].counters.spins": 4, "p[c].counters.spins": 6,
		"p[a].counters.loop": 8, "p[b].counters.loop": 8, "p[c].counters.loop": 8, "p[c].counters.sends": 2,
		"p[d].counters.kicks": 0, "irq 9 a": 3, "vcsw": 1, "cpu_ms": 10}, 2)
	wantLines := []string{"cpu_ms 5, vcsw 0.5, irq 9 a 1.5", "in all 3: loop 4", "p[a] = p[b]: spins 2", "p[c]: sends 1, spins 3"}
	if !slices.Equal(lines, wantLines) {
		t.Errorf("formatCounters = %q, want %q", lines, wantLines)
	}
	if got := abba("KSA", 0) + abba("KSA", 1) + abba("KSA", 2); got != "KSAASKKSA" {
		t.Errorf("abba order %q", got)
	}
}

// TestBenchConfigFromEnv pins the knobs that change what a round measures:
// the clients (C-like by default, Go's poller on request) and the
// scheduler-trace directory.
func TestBenchConfigFromEnv(t *testing.T) {
	t.Setenv(EnvBenchClient, "go")
	t.Setenv(EnvBenchSchedTrace, "/tmp/traces")
	cfg, err := benchConfigFromEnv()
	if err != nil || cfg.RawClient || cfg.SchedTrace != "/tmp/traces" {
		t.Fatalf("got %+v, %v", cfg, err)
	}
	for _, v := range []string{"", "c", "raw"} {
		t.Setenv(EnvBenchClient, v)
		t.Setenv(EnvBenchSchedTrace, "")
		if cfg, err = benchConfigFromEnv(); err != nil || !cfg.RawClient || cfg.SchedTrace != "" {
			t.Fatalf("%s=%q: got %+v, %v", EnvBenchClient, v, cfg, err)
		}
	}
	if cfg.TracePhase != "rtt" {
		t.Errorf("default trace phase %q, want rtt", cfg.TracePhase)
	}
	t.Setenv(EnvBenchTracePhase, "g2h")
	if cfg, err = benchConfigFromEnv(); err != nil || cfg.TracePhase != "g2h" {
		t.Errorf("trace phase g2h: got %+v, %v", cfg, err)
	}
	t.Setenv(EnvBenchTracePhase, "idle")
	if _, err = benchConfigFromEnv(); err == nil {
		t.Error("an unknown trace phase was accepted")
	}
	t.Setenv(EnvBenchTracePhase, "")
	t.Setenv(EnvBenchClient, "python")
	if _, err = benchConfigFromEnv(); err == nil {
		t.Error("an unknown client was accepted")
	}
	t.Setenv(EnvBenchClient, "")
	t.Setenv(EnvBenchBAgent, filepath.Join(t.TempDir(), "missing"))
	if _, err = benchConfigFromEnv(); err == nil {
		t.Error("a missing B agent was accepted")
	}
	bin := filepath.Join(t.TempDir(), "vserial-agent")
	if err := os.WriteFile(bin, []byte("x"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv(EnvBenchBAgent, bin)
	if cfg, err = benchConfigFromEnv(); err != nil || cfg.BAgent != bin || (&suite{cfg: cfg}).arms() != "KSAGB" {
		t.Errorf("B agent: got %+v, %v", cfg, err)
	}
	t.Setenv(EnvBenchBAgent, "")
	if cfg, err = benchConfigFromEnv(); err != nil || (&suite{cfg: cfg}).arms() != "KSAG" {
		t.Errorf("no B agent, no B flags: got %+v, %v; want no B arm", cfg, err)
	}
	t.Setenv(EnvBenchBArgs, " --poll  off ")
	if cfg, err = benchConfigFromEnv(); err != nil || cfg.BAgent != "" || !slices.Equal(cfg.BArgs, []string{"--poll", "off"}) || (&suite{cfg: cfg}).arms() != "KSAGB" {
		t.Errorf("B flags alone: got %+v, %v; want A's build with --poll off as B", cfg, err)
	}
}

func TestRoundFloorsUseTheRoundsOwnPingPong(t *testing.T) {
	ks := []roundResult{{rtt: []float64{100, 200, 300}}, {rtt: []float64{150, 150, 150}}}
	got, err := roundFloorsOf(ks, []float64{400, 600, 1000})
	if err != nil {
		t.Fatal(err)
	}
	// Round 1: K p50 200 + (400+600)/2; round 2: 150 + (600+1000)/2.
	if want := []float64{700, 950}; !slices.Equal(got, want) {
		t.Fatalf("floors %v, want %v", got, want)
	}
	if _, err := roundFloorsOf(ks, []float64{400, 600}); err == nil {
		t.Fatal("a ping-pong missing: no error")
	}
	if _, err := roundFloorsOf(nil, []float64{400}); err == nil {
		t.Fatal("no rounds: no error")
	}
}

func TestPortCountPicksTheNamedPort(t *testing.T) {
	c, err := listCounters([]byte(`{"agent":{"ports":[
		{"name":"org.vserial.bench","bytes_out":1470,"counters":{"sends":1400}},
		{"name":"org.vserial.bench.2","bytes_out":9}]}}`))
	if err != nil {
		t.Fatal(err)
	}
	if got := portCount(c, "org.vserial.bench", "bytes_out"); got != 1470 {
		t.Errorf("bytes_out %v, want 1470 (%v)", got, c)
	}
	if got := portCount(c, "org.vserial.bench", "sends"); got != 1400 {
		t.Errorf("sends %v, want 1400", got)
	}
	if got := portCount(c, "org.other", "bytes_out"); got != 0 {
		t.Errorf("bytes_out of a missing port %v, want 0", got)
	}
}
