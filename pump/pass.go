package pump

// One pass of the loop over the device and its clients (pass, serve), and
// the spin on a receive ring after a small send.

import (
	"errors"
	"io"
	"sync/atomic"
	"time"

	"github.com/vserial/vserial/driver"
)

// pass services the device once and moves what each client can move. It
// reports progress: bytes moved, a client ended, or control work left.
func (l *Loop) pass() (progress bool) {
	l.stats.passes.Add(1)
	progress = l.dev.Poll()
	// Several clients while streaming: the whole pass real-time (batch.go).
	rt := l.batch && len(l.active) > 1 && l.enterRT()
	if rt {
		l.stats.rtPass.Add(1)
	}
	for i := 0; i < len(l.active); {
		c := l.active[i]
		if l.serve(c) {
			progress = true
		}
		if !c.ended {
			i++
		}
	}
	if rt {
		l.rtBack()
	}
	if !progress {
		l.rxFlush = false
	}
	return progress
}

// serve moves c's bytes both ways as far as the device and the descriptor
// allow, without blocking.
func (l *Loop) serve(c *client) (progress bool) {
	if c.ep != nil {
		l.serveEndpoint(c)
		return false
	}
	p := c.port
	if c.writable && l.rxDue(c) {
		n, _, err := p.RecvTo(c)
		if n > 0 {
			progress = true
			c.spin.reply(nanotime(), false)
			if !l.noBatch {
				l.batchMode(n)
			}
			l.rxStreamMode(c, n)
			l.replied(n)
		}
		if err != nil {
			l.end(c, err)
			return true
		}
	}
	if c.eof {
		done, err := p.TxDrained()
		switch {
		case err != nil:
			l.end(c, err)
			return true
		case done:
			l.end(c, io.EOF)
			return true
		}
		return progress
	}
	if !c.readable {
		return progress
	}
	n, block, err := p.SendFrom(c)
	if n > 0 {
		progress = true
		c.pc.sends.Add(1)
		if !l.noBatch {
			l.batchMode(n)
		}
		if c.spin.sent(n, nanotime()) {
			l.spinOn = c
		}
	}
	switch {
	case errors.Is(err, io.EOF):
		c.eof = true
		return true
	case err != nil:
		l.end(c, err)
		return true
	}
	if block == driver.SendGated && c.hup && !c.peeked {
		// The host is away and the client hung up: with nothing unread it
		// may go (its bytes already queued are flushed first); otherwise
		// it keeps the port until the host takes them.
		c.peeked = true
		l.stats.peeks.Add(1)
		if c.hungUpEmpty() {
			c.eof = true
			return true
		}
	}
	return progress
}

// spin waits, with interrupts off and no system call, for the reply to the
// small send the last pass made, for at most that client's budget.
func (l *Loop) spin() bool {
	c := l.spinOn
	l.spinOn = nil
	if c == nil || c.ended || c.spin.budget <= 0 || c.spin.kickAt == 0 {
		return false
	}
	start := nanotime()
	deadline := start + int64(c.spin.budget)
	for i := 0; ; i++ {
		if c.port.RxPending() {
			now := nanotime()
			l.stats.spinNanos.Add(uint64(now - start))
			l.stats.spinHits.Add(1)
			c.pc.spinHits.Add(1)
			c.spin.reply(now, true)
			return true
		}
		if i&7 == 7 {
			if now := nanotime(); now >= deadline {
				l.stats.spinNanos.Add(uint64(now - start))
				l.stats.spinMisses.Add(1)
				c.pc.spinMisses.Add(1)
				c.spin.missed()
				return false
			}
		}
	}
}

// Test hooks: a function run right before Arm (to land device work in the
// window between the last pass and the sleep), and a mutation that ignores
// what Arm found (the lost wake-up the re-check prevents).
var (
	testHookBeforeArm atomic.Pointer[func()]
	testIgnoreArm     atomic.Bool
)

// epoch anchors nanotime's monotonic clock.
var epoch = time.Now()

func nanotime() int64 { return int64(time.Since(epoch)) + 1 }
