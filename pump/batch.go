package pump

import (
	"golang.org/x/sys/unix"
)

// While a port streams, every client write (or every interrupt) would wake
// the loop and, on one vCPU, preempt the client at once: two process
// switches per few KiB, and a switch costs far more than the copy under
// TCG (it flushes the whole software TLB). With SCHED_BATCH the scheduler
// does not preempt the running task for the loop's wake-ups, so the
// client fills its socket buffer (or drains the ring) before the loop
// runs, and each switch moves up to the whole buffer. The loop switches
// back to SCHED_OTHER at the first small transfer, so request/reply
// traffic keeps its wake-up latency. The loop goroutine is locked to its
// thread, so the policy stays with it.
const (
	// streamBytes: a readv or writev at least this large means a stream.
	streamBytes = 16 << 10
	// trickleBytes: smallTransfers in a row at most this large end the
	// batch mode (a stream's own small transfers do not flap it).
	trickleBytes   = 4 << 10
	smallTransfers = 4
)

// batchMode follows what the last transfer says about the traffic.
func (l *Loop) batchMode(n int) {
	switch {
	case n >= streamBytes:
		l.small = 0
		if !l.batch {
			l.setPolicy(true)
		}
	case n <= trickleBytes && l.batch:
		l.small++
		if l.small >= smallTransfers {
			l.setPolicy(false)
		}
	}
}

func (l *Loop) setPolicy(batch bool) {
	if l.batchBroken {
		return
	}
	attr := unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_NORMAL}
	if batch {
		attr.Policy = unix.SCHED_BATCH
	}
	if err := unix.SchedSetAttr(0, &attr, 0); err != nil {
		l.batchBroken = true
		l.log.Warn("pump: cannot change the loop's scheduling policy; streams are not batched", "err", err)
		return
	}
	l.batch = batch
	l.stats.policySwitches.Add(1)
}
