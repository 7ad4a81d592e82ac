package qemu

// The summary: the table of medians and ratios, the relay floor and the
// relay ceiling.

import (
	"fmt"
	"strings"
	"text/tabwriter"
)

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
		s.printf("B (%s, medians of the rounds): %s\n", s.bLabel(), strings.Join(line, "; "))
	}

	kp50 := percentile(pooled('K'), 50)
	// The ping-pong on raw system calls, as a C relay makes them (the
	// floor of any relay); the one through Go's system call wrappers,
	// which this floor used until 2026-12-04 evening, adds Go's runtime
	// on both sides and is printed below for comparison.
	proc := (cal0["proc_unix_raw_p50_us"] + cal1["proc_unix_raw_p50_us"]) / 2
	floor := kp50 + proc
	ap50, ap99, sp50 := percentile(pooled('A'), 50), percentile(pooled('A'), 99), percentile(pooled('S'), 50)
	// K's own p99 against the same floor: where the host's noise already
	// puts the kernel driver's tail above 1.5× it, no relay can be under.
	kp99 := percentile(pooled('K'), 99)
	floorLine := fmt.Sprintf("A p50 %.2f× the relay floor, A p99 %.2f×, S p50 %.2f×, K p99 %.2f×", ap50/floor, ap99/floor, sp50/floor, kp99/floor)
	goProc := (cal0["proc_unix_go_p50_us"] + cal1["proc_unix_go_p50_us"]) / 2
	s.printf("relay floor = K round trip p50 %.0f µs + process ping-pong p50 over a Unix socket on raw system calls %.0f µs (mean of the two calibrations) = %.0f µs; %s\n",
		kp50, proc, floor, floorLine)
	goSys := (cal0["proc_unix_p50_us"] + cal1["proc_unix_p50_us"]) / 2
	s.printf("  (with Go's system calls on both sides of the ping-pong, the floor before 2026-12-04 evening: %.0f µs, floor %.0f µs, A p50 %.2f×, A p99 %.2f× it; with Go's poller on both sides: %.0f µs, floor %.0f µs, A p50 %.2f× it)\n",
		goSys, kp50+goSys, ap50/(kp50+goSys), ap99/(kp50+goSys), goProc, kp50+goProc, ap50/(kp50+goProc))
	s.b.ReportMetric(ap99/(kp50+goSys), "rtt-p99-A/floor-gosys")
	s.roundFloors(res)
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

// roundFloors prints the round-trip ratios against each round's own relay
// floor: K's p50 in that round plus the process ping-pong measured around
// it (the mean of the ones before and after, calib-proc). The host's
// speed drifts within a boot (the calibrations before and after the rounds
// have differed by 2×), and a floor of the round's own moment keeps that
// drift out of the ratio; the boot's floor above stays for comparison
// with older reports.
func (s *suite) roundFloors(res map[byte][]roundResult) {
	floors, err := roundFloorsOf(res['K'], s.pings)
	if err != nil {
		s.printf("(no relay floor per round: %v)\n", err)
		return
	}
	per := func(arm byte, q float64) spread {
		var xs []float64
		for _, rr := range res[arm] {
			xs = append(xs, percentile(rr.rtt, q))
		}
		return spreadOf(ratios(xs, floors))
	}
	a50, a99, s50, k99 := per('A', 50), per('A', 99), per('S', 50), per('K', 99)
	var fl []string
	for _, f := range floors {
		fl = append(fl, fmt.Sprintf("%.0f", f))
	}
	s.printf("relay floor per round (K's p50 in the round + the raw process ping-pong around it): %s µs; against it, per round: A p50 %s, A p99 %s, S p50 %s, K p99 %s\n",
		strings.Join(fl, " "), a50, a99, s50, k99)
	s.b.ReportMetric(a50.Med, "rtt-p50-A/round-floor")
	s.b.ReportMetric(a99.Med, "rtt-p99-A/round-floor")
	s.b.ReportMetric(k99.Med, "rtt-p99-K/round-floor")
	if len(res['B']) == len(floors) {
		b50, b99 := per('B', 50), per('B', 99)
		s.printf("  B against it: p50 %s, p99 %s\n", b50, b99)
	}
}

// roundFloorsOf is each round's relay floor: K's round-trip p50 in it plus
// the mean of the ping-pongs before and after it (pings has one more entry
// than there are rounds).
func roundFloorsOf(ks []roundResult, pings []float64) ([]float64, error) {
	if len(ks) == 0 || len(pings) != len(ks)+1 {
		return nil, fmt.Errorf("%d ping-pongs for %d rounds", len(pings), len(ks))
	}
	floors := make([]float64, len(ks))
	for r, k := range ks {
		floors[r] = percentile(k.rtt, 50) + (pings[r]+pings[r+1])/2
	}
	return floors, nil
}

// bLabel says what the B arm is: the other build, its extra flags, or both.
func (s *suite) bLabel() string {
	var what []string
	if s.cfg.BAgent != "" {
		what = append(what, EnvBenchBAgent)
	}
	if len(s.cfg.BArgs) > 0 {
		what = append(what, fmt.Sprintf("%s=%q", EnvBenchBArgs, strings.Join(s.cfg.BArgs, " ")))
	}
	return strings.Join(what, ", ")
}
