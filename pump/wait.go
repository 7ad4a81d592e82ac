package pump

import (
	"golang.org/x/sys/unix"

	"github.com/vserial/vserial/internal/rawio"
)

// wait sleeps in epoll_wait until an event or l.timeout(). While traffic
// moves (after a client's or the device's event) it waits with a raw
// system call (rawio.EpollWait), at most rawWaitMax at a time; once a raw
// wait ended with nothing to do, the ordinary way (unix.EpollWait), so
// that an idle loop sleeps without a deadline. With an in-process endpoint
// attached only streams wait raw: the endpoint's goroutines need the P
// that a raw wait keeps (GOMAXPROCS is 1 on one vCPU).
//
// Why: Go's scheduler sees the loop goroutine, which never yields (it is
// locked to its thread and its hot system calls are raw), as running for
// as long as a stream lasts. Its sysmon then finds it, every 10 ms, in
// whatever ordinary system call it is in, takes its P (the P comes back
// through another thread), and polls again every 20 µs for the next
// millisecond or so. On one vCPU each sysmon wake-up preempts the client:
// a process switch. Measured in the guest, a stream woke sysmon 8–16
// times per MiB with the ordinary wait and 4–6 with the raw one
// (sysmon_vcsw in the benchmark's counters). Between messages the same
// holds: each ordinary wait gives the P up, and the wake-up after it
// takes one back and wakes sysmon, which then polls every 20 µs for a
// millisecond (1.2–1.8 sysmon wake-ups per message of a 1 ms trickle).
func (l *Loop) wait() (int, error) {
	t := l.timeout()
	if !l.rawIdle && (l.batch || l.endpoints == 0) {
		if t < 0 || t > rawWaitMax {
			t = rawWaitMax
		}
		l.stats.rawWaits.Add(1)
		n, e := rawio.EpollWait(l.ep, l.evs, t)
		// Woken by the clock with no stream's tail due: the traffic
		// stopped, so sleep the ordinary way until the next event.
		l.rawIdle = n == 0 && e == 0 && l.rxStreams == 0
		if e != 0 {
			return 0, e
		}
		return n, nil
	}
	// events clears rawIdle on a client's or the device's event; a
	// command (the control plane) does not make the loop wait raw.
	return unix.EpollWait(l.ep, l.evs, t)
}

// rawWaitMax bounds one raw wait (ms): a stream that stops costs the loop
// one more wake-up after it, then the loop sleeps the ordinary way.
const rawWaitMax = 5
