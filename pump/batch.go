package pump

import (
	"runtime"

	"golang.org/x/sys/unix"

	"github.com/vserial/vserial/internal/rawio"
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
// thread while the policy is not the default (holdThread), so the policy
// stays with it.
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
	if l.inRT {
		// Real-time for now: rtBack applies the fair policy chosen here.
		l.batch = batch
		l.stats.policySwitches.Add(1)
		return
	}
	if batch {
		l.holdThread()
	}
	attr := unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: l.fairPolicy(batch), Nice: l.fairNice(batch)}
	if err := rawio.SchedSetAttr(&attr); err != 0 {
		l.batchBroken = true
		l.log.Warn("pump: cannot change the loop's scheduling policy; streams are not batched", "err", err)
		if !batch {
			// Stuck in SCHED_BATCH: the thread stays the loop's.
			l.policyStuck = true
		}
		l.releaseThread()
		return
	}
	l.batch = batch
	l.stats.policySwitches.Add(1)
	l.releaseThread()
}

// holdThread locks the loop goroutine to its thread before the thread's
// policy leaves the default; releaseThread unlocks it once the policy is
// the default again. Between the two Go may run the goroutine on any
// thread, and parks it in the poller (wait.go); a thread with another
// policy must never run other goroutines.
func (l *Loop) holdThread() {
	if !l.locked {
		runtime.LockOSThread()
		l.locked = true
	}
}

func (l *Loop) releaseThread() {
	if l.locked && l.parking && !l.batch && !l.inRT && !l.policyStuck {
		runtime.UnlockOSThread()
		l.locked = false
	}
}

// Even SCHED_BATCH does not keep the client from preempting the loop in
// the middle of one large writev or readv: the kernel queues a Unix stream
// in skbs of at most about 36 KiB and wakes the client for each (and a
// reader that frees the writer's buffer wakes the writer), and the woken
// client, SCHED_OTHER, preempts the batch task; the pair then switches
// once per skb. So a bulk transfer runs as SCHED_FIFO (priority 1), which
// no SCHED_OTHER wake-up preempts, and the policy goes back right after
// the call. Only the one system call runs real-time: the loop never spins
// or waits in it. Without CAP_SYS_NICE this is skipped.
//
// Host→guest only. Measured guest→host (uio, one vCPU), real-time reads
// made things worse, not better: the switch back to a fair policy
// reschedules at once, the client runs in the middle of the pass, and the
// loop woke twice as often (24 sleeps per MiB against 9–12, 55–64 MB/s
// against 155); keeping the loop real-time for its whole pass did no
// better. Guest→host streams on one client run SCHED_BATCH alone; a pass
// over several clients while streaming runs real-time as a whole
// (enterRT).

// enterRT makes the loop's thread SCHED_FIFO priority 1 (rtBack ends it)
// and reports whether it did. It is used for one bulk host→guest writev
// (rtCall) and for one pass over several clients while streaming (pass):
// each readv or writev frees or fills a client's buffer and wakes that
// client, which would otherwise preempt the loop before the next client's
// turn (a pair of process switches per client per pass on one vCPU); with
// the pass real-time, the woken clients run after it.
func (l *Loop) enterRT() bool {
	if l.rtBroken || l.inRT {
		return false
	}
	l.holdThread()
	fifo := unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_FIFO, Priority: 1}
	if err := rawio.SchedSetAttr(&fifo); err != 0 {
		l.rtBroken = true
		l.log.Info("pump: bulk transfers cannot run real-time; they may be preempted per skb", "err", err)
		l.releaseThread()
		return false
	}
	l.inRT = true
	return true
}

// fairPolicy is the policy the loop's thread runs outside real-time:
// SCHED_BATCH while streaming, SCHED_OTHER otherwise.
func (l *Loop) fairPolicy(batch bool) uint32 {
	if batch {
		return unix.SCHED_BATCH
	}
	return unix.SCHED_NORMAL
}

// fairNice is the nice value that goes with fairPolicy: the process's
// (run --nice) outside streams, where a client the loop wakes must not
// preempt it before it sleeps (cmd/vserial-agent/nice.go); while
// streaming no better than 0, as before, so that the clients get the CPU
// to fill their buffers between the loop's passes (with −10 there, eight
// streaming clients moved 0.78–0.94× as much guest→host).
func (l *Loop) fairNice(batch bool) int32 {
	if batch {
		return max(l.nice, 0)
	}
	return l.nice
}

// rtBack leaves SCHED_FIFO for the fair policy of the moment (fairPolicy);
// never stays real-time: if that fails, the default policy.
func (l *Loop) rtBack() {
	l.inRT = false
	back := unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: l.fairPolicy(l.batch), Nice: l.fairNice(l.batch)}
	if err := rawio.SchedSetAttr(&back); err != 0 {
		l.log.Warn("pump: leave SCHED_FIFO", "err", err)
		l.rtBroken = true
		def := unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_NORMAL, Nice: l.nice}
		if rawio.SchedSetAttr(&def) != 0 {
			// Stuck in SCHED_FIFO: the thread stays the loop's.
			l.policyStuck = true
		}
		l.batch = false
	}
	l.releaseThread()
}

// rtCall runs call with the loop's thread SCHED_FIFO when the loop is
// streaming and the transfer is large; otherwise it just runs it.
func (l *Loop) rtCall(total int, call func()) {
	if !l.batch || total < streamBytes || !l.enterRT() {
		call()
		return
	}
	l.stats.rtCalls.Add(1)
	call()
	l.rtBack()
}
