package qemu

import (
	"context"
	"fmt"
	"path"
	"strings"
	"testing"
	"time"
)

// BenchmarkNodeVsSocket measures what a port's device node (run --nodes,
// CUSE) costs against its socket, on the same port of one boot: rounds of
// MeasurePort (throughput both ways, 1-byte round trips) alternating the
// arms ABBA, then the median of the node/socket ratios with their range
// (docs/benchmarks.md). VSERIAL_BENCH_MIB, VSERIAL_BENCH_RTTS and
// VSERIAL_BENCH_ROUNDS size it as they size BenchmarkKernelVsAgent.
//
//	go test -run '^$' -bench NodeVsSocket -benchtime 1x ./tests/qemu/
func BenchmarkNodeVsSocket(b *testing.B) {
	cfg, err := benchConfigFromEnv()
	if err != nil {
		b.Fatal(err)
	}
	g := Boot(b, Options{
		Ports: []Port{{Name: benchPort}}, MaxPorts: 2,
		Files: []File{BuildAgent(b)}, Modules: []string{"cuse"},
	})
	ctx, cancel := context.WithTimeout(b.Context(), time.Hour)
	defer cancel()
	agent, err := StartAgent(ctx, g, "--nodes")
	if err != nil {
		b.Fatal(err)
	}
	arms := []struct{ name, path string }{
		{"socket", AgentSocket(benchPort)},
		{"node", path.Join("/dev/virtio-ports", benchPort)},
	}
	for _, a := range arms {
		if err := g.WaitPath(ctx, a.path, 30*time.Second); err != nil {
			b.Fatalf("%s: %v", a.name, err)
		}
	}
	conn := g.DialPort(b, benchPort)
	mc := MeasureConfig{Bytes: cfg.Bytes, RoundTrips: cfg.RTTs}
	measure := func(arm int) Measurement {
		b.Helper()
		// Bounded: a lost wake-up stalls the guest's program for good.
		mctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		defer cancel()
		m, err := MeasurePort(mctx, g, conn, arms[arm].path, mc)
		if err != nil {
			_ = agent.Signal(ctx, 3) // SIGQUIT: where the agent waits
			out, _ := agent.Wait(ctx)
			b.Fatalf("%s: %v\nagent:\n%s", arms[arm].name, err, out)
		}
		// The node's last close hands the port back to the socket side
		// once the device took every byte (at most 2 s, docs/nodes.md).
		time.Sleep(2 * time.Second)
		return m
	}
	measure(0) // warm-up
	measure(1)
	var h2g, g2h, rtt [2][]float64
	b.ResetTimer()
	for range b.N {
		for round := range cfg.Rounds {
			order := []int{0, 1}
			if round%2 == 1 {
				order = []int{1, 0}
			}
			for _, arm := range order {
				m := measure(arm)
				b.Logf("round %d %s: %s", round, arms[arm].name, m)
				h2g[arm] = append(h2g[arm], m.HostToGuest.MBps)
				g2h[arm] = append(g2h[arm], m.GuestToHost.MBps)
				rtt[arm] = append(rtt[arm], m.RoundTrips.MeanUS)
			}
		}
	}
	b.StopTimer()
	var rep strings.Builder
	fmt.Fprintf(&rep, "node vs socket, %d rounds of %d MiB each way and %d round trips (node/socket, median [min–max]):\n",
		cfg.Rounds, cfg.Bytes>>20, cfg.RTTs)
	for _, r := range []struct {
		what string
		v    [2][]float64
		unit string
	}{{"host→guest", h2g, "h2g"}, {"guest→host", g2h, "g2h"}, {"round trip", rtt, "rtt"}} {
		ratio := spreadOf(ratios(r.v[1], r.v[0]))
		fmt.Fprintf(&rep, "  %-10s socket %8.1f  node %8.1f  ratio %s\n", r.what, median(r.v[0]), median(r.v[1]), ratio)
		b.ReportMetric(ratio.Med, r.unit+"-node/socket")
	}
	b.ReportMetric(median(h2g[1]), "node-h2g-MB/s")
	b.ReportMetric(median(g2h[1]), "node-g2h-MB/s")
	b.ReportMetric(median(rtt[1]), "node-rtt-µs")
	appendBenchReport(b, fmt.Sprintf("==== %s (%s)\n%s", b.Name(), time.Now().UTC().Format(time.RFC3339), rep.String()))
}
