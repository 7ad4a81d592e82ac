package pump

import (
	"testing"
	"time"
)

func TestParsePoll(t *testing.T) {
	for in, want := range map[string]Poll{
		"":         {Mode: PollAdaptive},
		"adaptive": {Mode: PollAdaptive},
		"off":      {Mode: PollOff},
		"0":        {Mode: PollOff},
		"250us":    {Mode: PollFixed, Budget: 250 * time.Microsecond},
		"10ms":     {Mode: PollFixed, Budget: 10 * time.Millisecond},
	} {
		got, err := ParsePoll(in)
		if err != nil || got != want {
			t.Errorf("ParsePoll(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, bad := range []string{"fast", "-1us", "11ms", "1h", "1"} {
		if _, err := ParsePoll(bad); err == nil {
			t.Errorf("ParsePoll(%q) accepted", bad)
		}
	}
}

const us = int64(time.Microsecond)

// TestSpinnerAdapts pins the adaptive policy: spins after small sends
// only, a budget that follows the replies, off after three misses, and
// back on when a reply comes soon enough by interrupt.
func TestSpinnerAdapts(t *testing.T) {
	s := newSpinner(Poll{Mode: PollAdaptive})
	if !s.sent(1, 1000*us) || s.budget != initialBudget {
		t.Fatalf("first small send: spin %v with budget %v", s.budget > 0, s.budget)
	}
	if s.sent(bulkSend, 2000*us) {
		t.Fatal("spun after a bulk send")
	}
	// Replies in 100 µs, caught by the spin: the budget follows 2× their
	// average.
	for i := range 8 {
		now := int64(10_000+1000*i) * us
		s.sent(1, now)
		s.reply(now+100*us, true)
	}
	if s.budget < 200*time.Microsecond || s.budget > initialBudget {
		t.Fatalf("budget %v after replies in 100µs", s.budget)
	}
	// A trickle: sends without replies. Three misses turn it off.
	for range missesOff {
		if !s.sent(1, 50_000*us) {
			t.Fatal("stopped spinning before three misses")
		}
		s.missed()
	}
	if s.sent(1, 60_000*us) {
		t.Fatal("still spinning after three misses")
	}
	// A reply that came by interrupt 150 µs after the send turns it back on.
	s.reply(60_150*us, false)
	if s.budget == 0 || !s.sent(1, 70_000*us) {
		t.Fatal("a reply soon after the send did not turn spinning back on")
	}
	// One that comes much later than any budget leaves it off.
	for range missesOff {
		s.sent(1, 80_000*us)
		s.missed()
	}
	s.sent(1, 90_000*us)
	s.reply(90_000*us+int64(5*time.Millisecond), false)
	if s.budget != 0 {
		t.Fatalf("a reply after 5 ms turned spinning on (budget %v)", s.budget)
	}
}

func TestSpinnerFixedAndOff(t *testing.T) {
	f := newSpinner(Poll{Mode: PollFixed, Budget: 70 * time.Microsecond})
	for range 5 {
		if !f.sent(1, 1) {
			t.Fatal("fixed: no spin after a small send")
		}
		f.missed()
	}
	if f.budget != 70*time.Microsecond {
		t.Fatalf("fixed budget moved to %v", f.budget)
	}
	o := newSpinner(Poll{Mode: PollOff})
	if o.sent(1, 1) {
		t.Fatal("off: spun")
	}
}

// TestSpinnerProbesWhileOff pins the way back from "off" when replies by
// interrupt are slower than any budget (the interrupt path itself can take
// over a millisecond under TCG): a probe every probeFirst small sends,
// backing off while probes miss, and spinning on again at a probe's hit.
func TestSpinnerProbesWhileOff(t *testing.T) {
	s := newSpinner(Poll{Mode: PollAdaptive})
	now := int64(0)
	off := func() {
		t.Helper()
		for range missesOff {
			now += 1000 * us
			s.sent(1, now)
			s.missed()
		}
		if s.budget != 0 {
			t.Fatalf("budget %v after %d misses", s.budget, missesOff)
		}
	}
	// spinsIn counts the sends, of n, that spin; each spin misses and each
	// reply comes by interrupt after 2 ms (beyond maxBudget).
	spinsIn := func(n int) (spins int) {
		for range n {
			now += 1000 * us
			if s.sent(1, now) {
				spins++
				if s.budget != probeBudget {
					t.Fatalf("probe budget %v, want %v", s.budget, probeBudget)
				}
				s.missed()
			}
			s.reply(now+2000*us, false)
		}
		return spins
	}
	off()
	if got := spinsIn(probeFirst - 1); got != 0 {
		t.Fatalf("%d probes in the first %d sends", got, probeFirst-1)
	}
	if got := spinsIn(1); got != 1 {
		t.Fatalf("no probe at send %d", probeFirst)
	}
	// Probes that miss come ever further apart: 32, 64, ... sends.
	if got := spinsIn(2*probeFirst + 4*probeFirst); got != 2 {
		t.Fatalf("%d probes in the next %d sends, want 2", got, 6*probeFirst)
	}
	// A trickle costs at most one probe per probeLast sends in the end.
	spinsIn(4 * probeLast)
	if got := spinsIn(2 * probeLast); got > 2 {
		t.Fatalf("%d probes in %d sends once backed off", got, 2*probeLast)
	}
	// A probe that sees the reply turns spinning back on for good.
	off()
	for i := 0; ; i++ {
		now += 1000 * us
		if s.sent(1, now) {
			s.reply(now+150*us, true)
			break
		}
		s.reply(now+2000*us, false)
		if i > probeFirst {
			t.Fatal("no probe")
		}
	}
	for range 10 {
		now += 1000 * us
		if !s.sent(1, now) {
			t.Fatal("not spinning after a probe's hit")
		}
		s.reply(now+150*us, true)
	}
}
