package qemu

import (
	"fmt"
	"strings"
)

// qemuSummary prints, per arm and direction, the load of QEMU's threads
// over the transfers of the measured rounds: per thread the median share
// of one core [min–max]; it reports the main loop's and the first vCPU's
// medians host→guest as metrics.
func (s *suite) qemuSummary(res map[byte][]roundResult) {
	s.printf("QEMU's threads on the host over each transfer, share of one core, median of the rounds [min–max]:\n")
	for _, dir := range []struct {
		name, key string
		load      func(roundResult) ThreadLoad
	}{
		{"host→guest", "h2g", func(r roundResult) ThreadLoad { return r.h2gQEMU }},
		{"guest→host", "g2h", func(r roundResult) ThreadLoad { return r.g2hQEMU }},
	} {
		for _, arm := range []byte("KSAG") {
			loads := make([]ThreadLoad, 0, len(res[arm]))
			for _, r := range res[arm] {
				loads = append(loads, dir.load(r))
			}
			med, line := summarizeLoads(loads)
			s.printf("  %s %c: %s\n", dir.name, arm, line)
			if dir.key == "h2g" && s.cfg.Trace {
				var count, size []float64
				for _, r := range res[arm] {
					if r.h2gReads.Count > 0 {
						count = append(count, float64(r.h2gReads.Count))
						size = append(size, float64(r.h2gReads.Bytes)/float64(r.h2gReads.Count))
					}
				}
				s.printf("      chardev reads (trace on): median %.0f reads per transfer, mean %.0f B per read\n", median(count), median(size))
			}
			if dir.key == "h2g" {
				s.b.ReportMetric(100*med["main"], fmt.Sprintf("%c-h2g-qemu-main-%%", arm))
				s.b.ReportMetric(100*med["cpu0"], fmt.Sprintf("%c-h2g-qemu-cpu0-%%", arm))
			}
		}
	}
}

// summarizeLoads gives each thread name's median share over loads (a
// round without the name counts 0) and a line of them, main and the
// vCPUs always, other threads from a median of 1 % on, and the median
// wait for a CPU from 1 % on.
func summarizeLoads(loads []ThreadLoad) (map[string]float64, string) {
	all := ThreadLoad{Busy: map[string]float64{}}
	for _, l := range loads {
		for n := range l.Busy {
			all.Busy[n] = 1 // for the order of the names below
		}
	}
	med := map[string]float64{}
	var parts []string
	for _, n := range all.Names() {
		xs := make([]float64, len(loads))
		for i, l := range loads {
			xs[i] = 100 * l.Busy[n]
		}
		qs := make([]float64, len(loads))
		for i, l := range loads {
			qs[i] = 100 * l.Queued[n]
		}
		sp, q := spreadOf(xs), median(qs)
		med[n] = sp.Med / 100
		if n != "main" && !strings.HasPrefix(n, "cpu") && sp.Med < 1 {
			continue
		}
		p := fmt.Sprintf("%s %.0f%% [%.0f–%.0f]", n, sp.Med, sp.Min, sp.Max)
		if q >= 1 {
			p += fmt.Sprintf(" (queued %.0f%%)", q)
		}
		parts = append(parts, p)
	}
	if len(parts) == 0 {
		return med, "(no samples)"
	}
	return med, strings.Join(parts, ", ")
}
