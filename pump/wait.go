package pump

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vserial/vserial/internal/rawio"
)

// waitState is the loop's part for how it sleeps; the loop goroutine
// owns it.
type waitState struct {
	// parking: the loop sleeps parked in Go's poller and is locked to its
	// thread only while its policy is not the default; otherwise it is
	// locked for good and waits raw (pinned). wait says which when.
	parking bool
	// The epoll descriptor in Go's poller, parking loops only: epFile owns
	// the descriptor when set; epConn is nil if the poller refused it.
	epFile    *os.File
	epConn    syscall.RawConn
	harvest   func(uintptr) bool // l.harvestFn, made once
	parkN     int
	parkErr   unix.Errno
	deadline  bool  // epFile has a read deadline set
	lastYield int64 // when the loop last parked or yielded (nanotime)
}

// waitMode chooses how the loop sleeps (Options.wait; tests set it).
type waitMode uint8

const (
	// waitAuto: parked when Go runs on one P (GOMAXPROCS 1, the agent's
	// setting on one CPU), raw otherwise.
	waitAuto waitMode = iota
	waitPark
	waitRaw
)

// wait sleeps until an event or l.timeout(). How depends on the number of
// Ps Go runs the agent on, and on the traffic:
//
//   - While a stream runs batched (the loop's thread SCHED_BATCH and
//     locked to it, batch.go): with a raw system call (rawio.EpollWait),
//     at most rawWaitMax at a time. One that ends with nothing to do means
//     the traffic stopped; the loop then sleeps the other way, with no
//     deadline, so an idle loop wakes for nothing.
//   - One P (parking): otherwise parked in Go's poller (parkedWait). The
//     goroutine is not locked to its thread then, gives its P back while
//     it waits, and goes through the scheduler at least every yieldEvery
//     while it does not park (yield).
//   - Several Ps (pinned: the goroutine locked to its thread for good):
//     raw as well while request/reply traffic moves, unless an in-process
//     endpoint is attached (its goroutines need the P a raw wait keeps);
//     otherwise an ordinary epoll_wait.
//
// Why: Go's sysmon thread watches goroutines that hold a P. A loop that
// keeps its P while it waits keeps sysmon awake: it wakes every 10 ms and,
// finding the loop on the same scheduling tick for over 10 ms, preempts it
// by force (a signal; for a goroutine locked to its thread, the P handed to
// another thread and back). On one vCPU each episode lands in a round trip:
// a scheduler trace put sysmon in 15–19 of each round's 20 slowest. An
// ordinary epoll_wait is no better: the P is retaken from it, and the
// return takes a P back and wakes sysmon, which then polls every 20 µs for
// a millisecond. A goroutine parked in the poller does neither: with every
// P idle sysmon sleeps deeply and the poller's wake-up does not wake it,
// and a yield from an unlocked goroutine on the only P costs one pass of
// the scheduler on the same thread (the traced tail then had sysmon in 1 of
// 20). With a second P that yield, and the poller's wake-ups, start
// another thread to take the idle P; measured on two vCPUs the parked loop
// was slower (round trip p50 1.11×, p99 1.31× the pinned one), so there the
// loop stays pinned, and sysmon runs on the other vCPU anyway. A stream
// keeps the raw wait in both: it runs for long anyway, and raw waits
// measured better there (fewer sysmon wake-ups per MiB than the ordinary
// wait).
func (l *Loop) wait() (int, error) {
	if l.parking {
		l.yield()
	}
	t := l.timeout()
	if !l.rawIdle && (l.batch || !l.parking && l.endpoints == 0) {
		if t < 0 || t > rawWaitMax {
			t = rawWaitMax
		}
		l.stats.rawWaits.Add(1)
		n, e := rawio.EpollWait(l.ep, l.evs, t)
		// Woken by the clock with no stream's tail due: the traffic
		// stopped, so sleep the other way until the next event.
		l.rawIdle = n == 0 && e == 0 && l.rxStreams == 0
		if e != 0 {
			return 0, e
		}
		return n, nil
	}
	if l.parking {
		return l.parkedWait(t)
	}
	// events clears rawIdle on a client's or the device's event; a
	// command (the control plane) does not make the loop wait raw.
	return unix.EpollWait(l.ep, l.evs, t)
}

// rawWaitMax bounds one raw wait (ms): a stream that stops costs the loop
// one more wake-up after it, then the loop sleeps without a deadline.
const rawWaitMax = 5

// parkedWait waits for the epoll descriptor to become readable in Go's
// poller, at most t ms (t < 0: no deadline), and harvests the events with
// a raw epoll_wait that does not block. An event that comes between the
// harvest and the park is not lost: the poller's readiness is reset before
// the first harvest (internal/poll's prepareRead), so an edge after it
// ends the park at once.
func (l *Loop) parkedWait(t int) (int, error) {
	if t == 0 {
		// Due now: look without parking (the poller would report the
		// deadline before looking).
		for {
			n, e := rawio.EpollWait(l.ep, l.evs, 0)
			if e == unix.EINTR {
				continue
			}
			if e != 0 {
				return 0, e
			}
			return n, nil
		}
	}
	if t > 0 {
		l.deadline = true
		if err := l.epFile.SetReadDeadline(time.Now().Add(time.Duration(t) * time.Millisecond)); err != nil {
			return 0, err
		}
	} else if l.deadline {
		l.deadline = false
		if err := l.epFile.SetReadDeadline(time.Time{}); err != nil {
			return 0, err
		}
	}
	l.parkN, l.parkErr = 0, 0
	if err := l.epConn.Read(l.harvest); err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return 0, nil
		}
		return 0, err
	}
	if l.parkErr != 0 {
		return 0, l.parkErr
	}
	return l.parkN, nil
}

// harvestFn takes whatever the epoll set holds without blocking; false
// (nothing yet) sends the loop goroutine to park in the poller.
func (l *Loop) harvestFn(uintptr) bool {
	for {
		n, e := rawio.EpollWait(l.ep, l.evs, 0)
		if e == unix.EINTR {
			continue
		}
		l.parkN, l.parkErr = n, e
		if n > 0 || e != 0 {
			return true
		}
		l.stats.parks.Add(1)
		l.lastYield = nanotime()
		return false
	}
}

// chooseWait makes the loop parking or pinned (wait). Only a parking
// loop's epoll descriptor goes into Go's poller, which would otherwise
// wake for nothing on each of its events.
func (l *Loop) chooseWait(mode waitMode) error {
	if mode != waitPark && (mode != waitAuto || runtime.GOMAXPROCS(0) != 1) {
		return nil
	}
	var err error
	if l.epFile, l.epConn, err = parkable(l.ep); err != nil {
		return fmt.Errorf("pump: epoll descriptor: %w", err)
	}
	if l.epConn == nil {
		l.log.Warn("pump: Go's poller refused the epoll descriptor; the loop waits pinned to its thread")
	}
	l.parking = l.epConn != nil
	l.harvest = l.harvestFn
	return nil
}

// parkable puts the epoll descriptor into Go's poller for parkedWait. nil,
// nil: the poller refused it (the loop then waits with ordinary
// epoll_wait calls, which Go's scheduler handles less well but correctly).
func parkable(ep int) (*os.File, syscall.RawConn, error) {
	if err := unix.SetNonblock(ep, true); err != nil {
		return nil, nil, err
	}
	f := os.NewFile(uintptr(ep), "pump-epoll")
	if f == nil {
		return nil, nil, errors.New("pump: os.NewFile refused the epoll descriptor")
	}
	// SetReadDeadline fails on a descriptor the poller did not take.
	if f.SetReadDeadline(time.Time{}) != nil {
		return f, nil, nil
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return f, nil, nil
	}
	return f, rc, nil
}

// yield goes through Go's scheduler at most every yieldEvery while the
// loop runs without parking (on one vCPU a client's next request is often
// there before the loop would sleep, so it rarely parks under round
// trips), so that sysmon, which preempts a goroutine it sees on the same
// scheduling tick for 10 ms, finds a new tick each time it looks. Not
// while the goroutine is locked to its thread: there a yield hands the P
// to another thread and back, which is what it is meant to save.
func (l *Loop) yield() {
	if l.locked {
		return
	}
	if now := nanotime(); now-l.lastYield >= yieldEvery {
		runtime.Gosched()
		l.lastYield = now
		l.stats.yields.Add(1)
	}
}

// yieldEvery is half sysmon's forced-preemption period (10 ms).
const yieldEvery = int64(5 * time.Millisecond)
