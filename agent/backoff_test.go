package agent

import (
	"testing"
	"time"
)

func TestBackoffSchedule(t *testing.T) {
	ms := time.Millisecond
	b := newBackoff(100*ms, time.Second)
	var got []time.Duration
	for range 7 {
		got = append(got, b.failed())
	}
	want := []time.Duration{100 * ms, 200 * ms, 400 * ms, 800 * ms, time.Second, time.Second, time.Second}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("failed waits = %v, want %v", got, want)
		}
	}
	// A short connection keeps the wait growing from where it was; one
	// that lasted at least the cap starts over.
	if d := b.ended(10 * ms); d != time.Second {
		t.Errorf("after a short connection: wait %v, want the cap 1s", d)
	}
	if d := b.ended(time.Second); d != 100*ms {
		t.Errorf("after a long connection: wait %v, want the minimum 100ms", d)
	}
	if d := b.failed(); d != 200*ms {
		t.Errorf("next failure: wait %v, want 200ms", d)
	}
}
