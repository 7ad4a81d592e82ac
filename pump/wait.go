package pump

import (
	"golang.org/x/sys/unix"

	"github.com/vserial/vserial/internal/rawio"
)

// wait sleeps in epoll_wait until an event or l.timeout(). While a port
// streams (batch mode) it waits with a raw system call (rawio.EpollWait),
// at most rawWaitMax at a time; otherwise, and once a raw wait ended with
// nothing to do, the ordinary way (unix.EpollWait), so that an idle loop
// sleeps without a deadline.
//
// Why: Go's scheduler sees the loop goroutine, which never yields (it is
// locked to its thread and its hot system calls are raw), as running for
// as long as a stream lasts. Its sysmon then finds it, every 10 ms, in
// whatever ordinary system call it is in, takes its P (the P comes back
// through another thread), and polls again every 20 µs for the next
// millisecond or so. On one vCPU each sysmon wake-up preempts the client:
// a process switch. Measured in the guest, a stream woke sysmon 8–16
// times per MiB with the ordinary wait and 4–6 with the raw one
// (sysmon_vcsw in the benchmark's counters).
func (l *Loop) wait() (int, error) {
	t := l.timeout()
	if l.batch && !l.rawIdle {
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
	n, err := unix.EpollWait(l.ep, l.evs, t)
	if n > 0 {
		l.rawIdle = false
	}
	return n, err
}

// rawWaitMax bounds one raw wait (ms): a stream that stops costs the loop
// one more wake-up after it, then the loop sleeps the ordinary way.
const rawWaitMax = 5
