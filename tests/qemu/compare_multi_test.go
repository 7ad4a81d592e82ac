package qemu

// Eight ports at once, each direction, per arm; and the nudge check of a
// host→guest phase (nudge.go).

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"
)

func (s *suite) multiRounds() {
	perPort := max(s.cfg.Bytes/2, 64<<10)
	s.printf("\n%d ports at once, %d KiB per port each way, aggregate MB/s:\n", benchPorts, perPort>>10)
	agg := map[string][]float64{}
	for r := 0; r <= s.cfg.Rounds; r++ {
		arms := "KA"
		if s.cfg.hasB() {
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
	watch := watchStall(s.ctx, s.g, n*int64(len(s.conns)))
	for i, c := range s.conns {
		done := deadline(s.ctx, c)
		wg.Go(func() {
			defer done()
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
