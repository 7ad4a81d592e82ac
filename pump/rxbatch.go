package pump

import (
	"time"

	"golang.org/x/sys/unix"

	"github.com/vserial/vserial/internal/rawio"
)

// A host→guest stream on one vCPU costs the loop a wake-up and the client
// a switch back for every writev, and a switch costs far more than the
// copy under TCG. Left alone, the loop hands the client whatever QEMU
// filled since the last writev (QEMU fills at most 4 KiB per pass of its
// main loop), the client drains it and blocks, and the pair switch again:
// about 64 KiB per cycle. While a port streams, the loop instead waits
// until rxBatch buffers are filled (the receive interrupt is asked for
// only then: Port.SetRxBatch, EVENT_IDX's used_event moved ahead) and
// hands them over in one writev; QEMU fills the ring meanwhile, in
// parallel with the client's work. The tail of a stream, or a stream that
// slows, is delivered after rxFlushAfter at most. Small writes end the
// mode, so replies to requests are never held back.
const (
	rxBatch      = 64 // buffers of 4 KiB: 256 KiB, half the ring
	rxFlushAfter = time.Millisecond
)

// rxDue says whether the loop should hand c its received bytes now.
func (l *Loop) rxDue(c *client) bool {
	if !c.rxStream {
		return true
	}
	buffered := c.port.RxBuffered()
	if l.rxFlush && buffered == 0 {
		// A flush found nothing: the stream is over (an idle loop must
		// not wake by the clock).
		l.endRxStream(c)
		return true
	}
	return l.rxFlush || buffered >= rxBatch
}

func (l *Loop) endRxStream(c *client) {
	if c.rxStream {
		c.rxStream, c.rxSmall = false, 0
		l.rxStreams--
		c.port.SetRxBatch(0)
	}
}

// rxStreamMode follows the size of the writes to c.
func (l *Loop) rxStreamMode(c *client, n int) {
	switch {
	case n >= streamBytes:
		c.rxSmall = 0
		if !c.rxStream {
			c.rxStream = true
			l.rxStreams++
			c.port.SetRxBatch(rxBatch)
		}
	case n <= trickleBytes && c.rxStream:
		c.rxSmall++
		if c.rxSmall >= smallTransfers {
			l.endRxStream(c)
		}
	}
}

// timeout is epoll_wait's: the storm backoff's end, or the next batch
// flush while a stream is being batched, or none.
func (l *Loop) timeout() int {
	t := l.storm.timeout()
	if l.rxStreams > 0 {
		if f := int(rxFlushAfter / time.Millisecond); t < 0 || f < t {
			t = f
		}
	}
	return t
}

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
