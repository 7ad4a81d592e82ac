package pump

import (
	"fmt"
	"strings"
	"time"
)

// PollMode says whether the loop spins on a port's receive queue after it
// sent the host a request, instead of sleeping until the reply's interrupt.
type PollMode uint8

const (
	// PollAdaptive spins for a budget learnt from the port's reply times:
	// enough for the slowest recent one (1.5× it, at least 3× their
	// moving average), within [minBudget, maxBudget]; halved
	// after a spin that saw no reply and off after three in a row; back on
	// when a reply arrives (by interrupt) soon enough that a spin would have
	// caught it, or when one of the probes made while off (one spin every
	// 16 small sends, backing off to every 1024) sees it. Never after a
	// bulk send, never while idle.
	PollAdaptive PollMode = iota
	// PollOff never spins: every reply comes by interrupt.
	PollOff
	// PollFixed spins for Poll.Budget after every small send.
	PollFixed
)

// Bounds of the adaptive budget, and where it starts.
const (
	minBudget     = 20 * time.Microsecond
	maxBudget     = time.Millisecond
	initialBudget = 300 * time.Microsecond
	// bulkSend is the size of a send after which the loop never spins: a
	// stream, not a request.
	bulkSend = 32 << 10
	// missesOff is how many spins in a row may miss before spinning stops.
	missesOff = 3
	// While spinning is off, every probeFirst-th small send (then twice
	// as far apart after each probe that misses, up to probeLast) spins
	// once with probeBudget: a probe that sees the reply turns spinning
	// back on.
	probeFirst  = 16
	probeLast   = 1024
	probeBudget = maxBudget / 2
)

// Poll is the polling policy of a loop (run's --poll).
type Poll struct {
	Mode   PollMode
	Budget time.Duration // PollFixed only
}

// ParsePoll reads --poll: "adaptive" (also ""), "off", or a fixed budget
// as a Go duration ("200us"), at most 10ms.
func ParsePoll(s string) (Poll, error) {
	switch strings.TrimSpace(s) {
	case "", "adaptive":
		return Poll{Mode: PollAdaptive}, nil
	case "off", "0", "0s":
		return Poll{Mode: PollOff}, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return Poll{}, fmt.Errorf("poll %q: want adaptive, off or a duration such as 200us", s)
	}
	if d <= 0 || d > 10*time.Millisecond {
		return Poll{}, fmt.Errorf("poll %q: a fixed budget must be above 0 and at most 10ms", s)
	}
	return Poll{Mode: PollFixed, Budget: d}, nil
}

func (p Poll) String() string {
	switch p.Mode {
	case PollOff:
		return "off"
	case PollFixed:
		return p.Budget.String()
	}
	return "adaptive"
}

// spinner is one client's spin state. Owned by the loop goroutine.
type spinner struct {
	mode   PollMode
	budget time.Duration // 0: off
	avg    time.Duration // moving average of reply times (0: none yet)
	high   time.Duration // the slowest recent reply, decaying
	misses int
	kickAt int64 // monotonic ns of the last small send still awaiting a reply, 0: none
	// While off: small sends since the last probe, the sends between
	// probes, and whether the spin in progress is a probe.
	sinceProbe, probeEvery int
	probing                bool
}

func newSpinner(p Poll) spinner {
	switch p.Mode {
	case PollOff:
		return spinner{mode: PollOff}
	case PollFixed:
		return spinner{mode: PollFixed, budget: p.Budget}
	}
	return spinner{mode: PollAdaptive, budget: initialBudget, probeEvery: probeFirst}
}

// sent records a send of n bytes at now; it reports whether a spin is in
// order.
func (s *spinner) sent(n int, now int64) bool {
	if n >= bulkSend {
		s.kickAt = 0
		return false
	}
	s.kickAt = now
	if s.budget == 0 && s.mode == PollAdaptive {
		// Off: a reply that comes by interrupt takes the slow path, often
		// beyond maxBudget, so it alone would never turn spinning back on
		// once the host had a slow spell. Probe now and then.
		s.sinceProbe++
		if s.sinceProbe >= s.probeEvery {
			s.sinceProbe = 0
			s.probing = true
			s.budget = probeBudget
		}
	}
	return s.budget > 0
}

// clamp keeps an adaptive budget within its bounds.
func clamp(d time.Duration) time.Duration {
	return min(max(d, minBudget), maxBudget)
}

// reply records that a reply arrived at now; spun says whether a spin saw
// it (a hit) or an interrupt brought it.
func (s *spinner) reply(now int64, spun bool) {
	if s.kickAt == 0 {
		return
	}
	l := time.Duration(now - s.kickAt)
	s.kickAt = 0
	if s.mode != PollAdaptive {
		return
	}
	if s.avg == 0 {
		s.avg = l
	} else {
		s.avg = (3*s.avg + l) / 4
	}
	// The slowest recent reply, decaying: a spin that gives up costs the
	// loop a sleep and the interrupt wake-up (two process switches, far
	// more than the spin), so the budget covers the tail, not the mean.
	s.high = max(l, s.high-s.high/16)
	s.probing = false
	switch {
	case spun:
		s.misses, s.probeEvery = 0, probeFirst
		s.budget = clamp(max(3*s.avg, s.high+s.high/2))
	case l <= maxBudget:
		// Late for the spin (or none ran), but within reach: a
		// request/reply port, not a trickle. Spin (again), long enough
		// for this one.
		s.misses, s.probeEvery = 0, probeFirst
		s.budget = clamp(max(3*s.avg, s.high+s.high/2))
	}
}

// missed records a spin that ended without a reply.
func (s *spinner) missed() {
	if s.mode != PollAdaptive {
		return
	}
	if s.probing {
		// A probe that missed: off again, and probe half as often.
		s.probing = false
		s.budget = 0
		s.probeEvery = min(2*s.probeEvery, probeLast)
		return
	}
	s.misses++
	s.budget /= 2
	if s.misses >= missesOff || s.budget < minBudget {
		s.budget = 0
		s.sinceProbe, s.probeEvery = 0, probeFirst
	}
}
