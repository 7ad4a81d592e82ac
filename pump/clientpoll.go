package pump

import (
	"runtime"

	"golang.org/x/sys/unix"

	"github.com/vserial/vserial/internal/rawio"
)

// On one vCPU the loop and its clients take turns, and a client's next
// request can only come after the loop sleeps. On two or more, the client
// runs on another vCPU, and waking the loop for its request costs an
// inter-processor wake-up and a switch (≈0.4 ms under TCG even so). After
// handing a client a small reply the loop therefore looks at its epoll
// set without blocking (epoll_wait with a zero timeout) for a budget
// learnt like the spin's (spinner: grows on hits, halves on misses, off
// after three; never after a bulk transfer, never while idle).

// multiCPU reports whether the guest has more than one CPU to run on.
var multiCPU = runtime.NumCPU() > 1

// replied records a reply of n bytes handed to a client: a client poll is
// in order after a small one.
func (l *Loop) replied(n int) {
	if !multiCPU || l.poll.Mode == PollOff {
		return
	}
	if l.cpoll.sent(n, nanotime()) {
		l.cpollDue = true
	}
}

// pollClients looks for events without sleeping, within the budget, after
// a small reply; it returns how many it found in l.evs (0: sleep).
func (l *Loop) pollClients() int {
	if !l.cpollDue {
		return 0
	}
	l.cpollDue = false
	start := nanotime()
	deadline := start + int64(l.cpoll.budget)
	for {
		n, err := rawio.EpollWait(l.ep, l.evs, 0)
		l.stats.epollPolls.Add(1)
		if err == 0 && n > 0 {
			now := nanotime()
			l.stats.clientPollHits.Add(1)
			l.stats.spinNanos.Add(uint64(now - start))
			l.cpoll.reply(now, true)
			return n
		}
		if err != 0 && err != unix.EINTR {
			return 0
		}
		if now := nanotime(); now >= deadline {
			l.stats.clientPollMisses.Add(1)
			l.stats.spinNanos.Add(uint64(now - start))
			l.cpoll.missed()
			return 0
		}
	}
}

// spaceEdge reports whether a client's epoll events say only that its
// descriptor can be written to: the peer took bytes, nothing came in.
func spaceEdge(events uint32) bool { return events&^uint32(unix.EPOLLOUT) == 0 }
