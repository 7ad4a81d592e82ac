package pump

import (
	"log/slog"
	"os"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// TestPolicyChosenDuringARealTimePassIsTheOneLeftAfter: a pass over
// several streaming clients runs real-time, and a small transfer in it
// ends the stream (setPolicy(false)). Leaving real-time must then give the
// thread SCHED_OTHER, not SCHED_BATCH: a batch thread is not woken at once
// for the request/reply traffic that follows. And the other way round.
func TestPolicyChosenDuringARealTimePassIsTheOneLeftAfter(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SCHED_FIFO needs CAP_SYS_NICE; the loop runs without it then")
	}
	for _, c := range []struct {
		name       string
		from, to   bool // batch before the pass, chosen in it
		wantPolicy uint32
	}{
		{"stream ends", true, false, unix.SCHED_NORMAL},
		{"stream starts", false, true, unix.SCHED_BATCH},
	} {
		t.Run(c.name, func(t *testing.T) {
			done := make(chan struct{})
			go func() {
				defer close(done)
				runtime.LockOSThread()
				// The thread dies with the goroutine, policy and all.
				l := &Loop{log: slog.New(slog.DiscardHandler)}
				l.setPolicy(c.from)
				if !l.enterRT() {
					t.Error("enterRT refused as root")
					return
				}
				if p := policy(t); p != unix.SCHED_FIFO {
					t.Errorf("in the pass: policy %d, want SCHED_FIFO", p)
				}
				l.setPolicy(c.to)
				if p := policy(t); p != unix.SCHED_FIFO {
					t.Errorf("setPolicy in a real-time pass changed the policy to %d", p)
				}
				l.rtBack()
				if p := policy(t); p != c.wantPolicy || l.batch != c.to {
					t.Errorf("after the pass: policy %d, batch %v; want %d, %v", p, l.batch, c.wantPolicy, c.to)
				}
			}()
			<-done
		})
	}
}

// policy is the calling thread's scheduling policy (an impossible value
// with the error reported, since this runs off the test's goroutine).
func policy(t *testing.T) uint32 {
	attr, err := unix.SchedGetAttr(0, 0)
	if err != nil {
		t.Error(err)
		return ^uint32(0)
	}
	return attr.Policy
}
