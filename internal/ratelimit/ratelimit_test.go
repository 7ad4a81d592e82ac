package ratelimit

import (
	"testing"
	"time"
)

// A burst goes through, then calls are held and counted, and the first
// call after a refill reports how many were held.
func TestGateBurstThenCountsHeld(t *testing.T) {
	g := New(3, 0.001) // no refill to speak of during the test
	for i := range 3 {
		if ok, held := g.Allow(); !ok || held != 0 {
			t.Fatalf("call %d of the burst: %v, %d held", i, ok, held)
		}
	}
	for i := range 5 {
		if ok, _ := g.Allow(); ok {
			t.Fatalf("call %d beyond the burst went through without a refill", i)
		}
	}
	g.lim.SetLimit(1e6) // refill within a millisecond
	time.Sleep(2 * time.Millisecond)
	if ok, held := g.Allow(); !ok || held != 5 {
		t.Fatalf("after the refill: %v with %d held, want true with 5", ok, held)
	}
	if _, held := g.Allow(); held != 0 {
		t.Fatalf("the held count did not start again: %d", held)
	}
}
