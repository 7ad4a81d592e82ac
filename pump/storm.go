package pump

import (
	"fmt"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vserial/vserial/driver"
)

// An interrupt that finds nothing to do costs a wake-up, an epoll_wait and
// (INTx) an ISR read and an unmask. A device that raises them in a loop, or
// a stuck INTx line, would keep the loop busy for nothing; Linux disables
// such an IRQ after 99,900 of 100,000 go unhandled (note_interrupt). The
// loop counts them per second and, past stormLimit with at most one in ten
// interrupts of the window doing work, stops watching the
// interrupt for a backoff (INTx stays masked), polling the device when it
// ends; repeated storms double the backoff up to maxBackoff. Each storm is
// reported as a protocol violation.
const (
	stormLimit   = 500 // interrupts without work in one window
	stormWindow  = time.Second
	firstBackoff = 10 * time.Millisecond
	maxBackoff   = time.Second
)

type stormState struct {
	windowStart int64
	count       int
	handled     int // interrupts with work in the window
	muted       bool
	until       int64
	backoff     time.Duration
	stormy      bool // a storm in the current or last window
}

// timeout is epoll_wait's timeout: until the backoff ends while muted.
func (s *stormState) timeout() int {
	if !s.muted {
		return -1
	}
	ms := (s.until - nanotime() + int64(time.Millisecond) - 1) / int64(time.Millisecond)
	return int(max(ms, 0))
}

// window starts a new counting window when the current one is over.
func (s *stormState) window(now int64) {
	if now-s.windowStart > int64(stormWindow) {
		if !s.stormy {
			s.backoff = 0
		}
		s.windowStart, s.count, s.handled, s.stormy = now, 0, 0, false
	}
}

// irq records whether an interrupt found work, and mutes a storm.
func (l *Loop) irq(handled bool) {
	s := &l.storm
	s.window(nanotime())
	if handled {
		s.handled++
		return
	}
	l.spurious()
}

// spurious records an interrupt that found nothing to do.
func (l *Loop) spurious() {
	l.stats.irqSpurious.Add(1)
	s := &l.storm
	now := nanotime()
	s.count++
	if s.count < stormLimit || s.handled*10 > s.count {
		return
	}
	s.count, s.handled, s.stormy = 0, 0, true
	s.backoff = min(max(2*s.backoff, firstBackoff), maxBackoff)
	s.muted, s.until = true, now+int64(s.backoff)
	for _, fd := range l.irqFDs {
		if err := unix.EpollCtl(l.ep, unix.EPOLL_CTL_DEL, fd, nil); err != nil {
			l.log.Warn("pump: stop watching the interrupt", "err", err)
		}
	}
	l.dev.ReportViolation(fmt.Errorf("%w: interrupt storm: %d interrupts found no work within %v; interrupts ignored for %v",
		driver.ErrDeviceProtocolConsole, stormLimit, stormWindow, s.backoff))
	l.stats.irqStorms.Add(1) // last: a reader that sees it sees the rest
}

// unmute watches the interrupt again after a backoff.
func (l *Loop) unmute() {
	l.storm.muted = false
	for i, fd := range l.irqFDs {
		if err := l.watch(fd, unix.EPOLLIN|unix.EPOLLET, tagIRQ, int32(i)); err != nil {
			l.log.Warn("pump: watch the interrupt again", "err", err)
		}
	}
}
