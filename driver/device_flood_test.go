package driver

import (
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestHostToggleFloodIsBounded: a device that connects and disconnects a
// port's host side thousands of times costs a bounded number of log lines
// and of queued events, and the port ends in the device's last state.
func TestHostToggleFloodIsBounded(t *testing.T) {
	r := newRig(t, rigOpts{plug: plugPorts(portSpec{id: 1, name: "p", host: true})})
	p := r.port(1, "p")
	r.until("host connected", p.HostConnected)
	start := time.Now()
	// Each toggle waits for the driver to see it: QEMU, like the model,
	// drops control messages that find no buffer.
	const toggles = 4_000
	maxQueued := 0
	for i := range toggles {
		want := i%2 == 1
		if err := r.m.HostConnect(1, want); err != nil {
			t.Fatal(err)
		}
		for p.HostConnected() != want {
			if r.ctx.Err() != nil {
				t.Fatalf("toggle %d never reached the driver", i)
			}
			runtime.Gosched()
		}
		if i%500 == 0 {
			r.d.mu.Lock()
			maxQueued = max(maxQueued, len(r.d.evq))
			r.d.mu.Unlock()
		}
	}
	r.until("last state", func() bool { return p.HostConnected() })
	elapsed := time.Since(start)
	lines := strings.Count(r.log.String(), "host connection")
	if limit := logBurst + int(elapsed.Seconds()*logRate) + 2; lines > limit {
		t.Errorf("%d host connection lines for %d toggles in %v (limit %d)", lines, toggles, elapsed, limit)
	}
	if r.d.Stats().LogsSuppressed == 0 {
		t.Error("no line was suppressed")
	}
	// Nobody reads Events here: without coalescing every toggle would wait
	// in the queue.
	if maxQueued > 8 {
		t.Errorf("%d events queued at once for one port", maxQueued)
	}
}
