package driver

import (
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestControlFloodIsBounded: a device that fills every control buffer again
// as soon as it is re-posted cannot keep the driver in its control loop
// (others still get the lock), and is reset, then failed once the reset
// budget is spent, with the reason.
func TestControlFloodIsBounded(t *testing.T) {
	// The fake under the race detector sends ~10k messages a second; the
	// limit comes down to that scale (and goes back for other tests).
	old := maxControlRate
	maxControlRate = 2_000
	t.Cleanup(func() { maxControlRate = old })
	r := newRig(t, rigOpts{plug: plugPorts(portSpec{id: 1, name: "p"})})
	p := r.port(1, "p")
	var calls, longest atomic.Int64
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			t0 := time.Now()
			r.d.Stats()
			if w := int64(time.Since(t0)); w > longest.Load() {
				longest.Store(w)
			}
			calls.Add(1)
			time.Sleep(time.Millisecond)
		}
	}()
	// The flood starts once the other goroutine has the lock's measure.
	for calls.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	// The device fills every control buffer the driver posts, as fast as
	// it can, with messages of an unknown event.
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-r.d.Done():
				return
			default:
			}
			if !r.m.SendControl(0, 0x7777, 0, nil) {
				runtime.Gosched()
			}
		}
	}()
	select {
	case <-r.d.Done():
	case <-r.ctx.Done():
		t.Fatalf("a flooding device kept running (%d resets, %d messages)", r.d.Stats().Resets, r.d.Stats().ControlIn)
	}
	if err := r.d.Err(); err == nil || !strings.Contains(err.Error(), "control flood") {
		t.Errorf("device error %v, want a control flood", err)
	}
	// A call blocked on the lock when the device failed has returned.
	for n := calls.Load(); calls.Load() < n+2; {
		time.Sleep(time.Millisecond)
	}
	// The other goroutine asks for the lock about once a millisecond. A
	// fast host spends the whole reset budget in a few milliseconds, a
	// handful of bounded service calls (maxControlPasses), so how often
	// it got the lock says little; how long it ever waited for it says
	// whether a call held it unbounded (a count of 5 turns failed here on
	// a quick host with the bound intact).
	if w := time.Duration(longest.Load()); w > 200*time.Millisecond {
		t.Errorf("another caller waited %v for the driver's lock during the flood", w)
	}
	if !p.Removed() {
		t.Error("the port of a failed device is not removed")
	}
}
