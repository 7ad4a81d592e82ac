package qemu

// The main rounds: the arms one at a time on the main port, in ABBA order,
// each phase with its counters.

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

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
	// QEMU's threads and this process's (the host's echo) over the
	// round trips: is the host late with the replies?
	rttQEMU, rttHost ThreadLoad
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
		if r == 1 {
			s.pingBetween()
		}
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
			s.printf("      %c round trips, host threads: qemu %s; the echo's process %s; waiting for a core per round trip: %s\n",
				arm, rr.rttQEMU, rr.rttHost, queuedPerRTT(rr, len(rr.rtt)))
			if s.cfg.Trace {
				s.printf("      %c chardev reads host→guest: %s\n", arm, rr.h2gReads)
			}
			if r > 0 {
				res[arm] = append(res[arm], rr)
				s.printPhases(rr)
			}
		}
		if r > 0 {
			s.pingBetween()
		}
	}
	return res
}

// queuedPerRTT is the time QEMU's main loop, its vCPU threads and the
// echo's process spent runnable but waiting for a host core, per round
// trip, in µs: a spinning vCPU holds a host core the others may need for
// the reply.
func queuedPerRTT(rr roundResult, n int) string {
	if n == 0 {
		return "(none)"
	}
	per := func(l ThreadLoad, match func(string) bool) float64 {
		var q float64
		for name, v := range l.Queued {
			if match(name) {
				q += v
			}
		}
		return q * float64(l.Wall.Microseconds()) / float64(n)
	}
	mainLoop := per(rr.rttQEMU, func(n string) bool { return n == "main" })
	vcpus := per(rr.rttQEMU, func(n string) bool { return strings.HasPrefix(n, "cpu") })
	echo := per(rr.rttHost, func(string) bool { return true })
	return fmt.Sprintf("qemu main %.0f µs, vCPUs %.0f µs, echo %.0f µs", mainLoop, vcpus, echo)
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
	if phase == "rtt" && (arm == 'A' || arm == 'B') {
		// Who ran in the slowest round trips (schedtail.go).
		var said any
		if said, err = AnalyzeSchedTail(out, s.cfg.RTTs, "vserial-agent"); err != nil {
			said = err
		}
		s.printf("      %c scheduler trace (%s): %v\n", arm, filepath.Base(name), said)
	}
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
	q0, h0 := SampleThreads(s.g.QEMUPid()), SampleThreads(os.Getpid())
	err = s.traced(se.arm, "rtt", func() (err error) {
		_, rr.rtt, err = PingPongSamples(s.ctx, s.g, conn, p, s.cfg.RTTs, s.cfg.RawClient)
		return err
	})
	rr.rttQEMU, rr.rttHost = SampleThreads(s.g.QEMUPid()).Since(q0), SampleThreads(os.Getpid()).Since(h0)
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
