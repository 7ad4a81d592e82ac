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
