package pump

import (
	"net"
	"sync/atomic"
	"time"
)

// How an in-process endpoint's caller waits and is woken (inproc.go has
// the endpoint itself): its waits with their deadlines, the spin of a Read
// for the reply to the request Write just queued, and the loop's part,
// which only signals a waiting caller.

// wait blocks until sig, the deadline in dl, Close, or the loop letting go.
func (e *Endpoint) wait(sig chan struct{}, dl *atomic.Int64, t *time.Timer) error {
	var tc <-chan time.Time
	if d := dl.Load(); d != 0 {
		left := time.Until(time.Unix(0, d))
		if left <= 0 {
			return ErrDeadline
		}
		t.Reset(left)
		tc = t.C
		defer t.Stop()
	}
	select {
	case <-sig:
		return nil
	case <-tc:
		return ErrDeadline
	case <-e.closing:
		return net.ErrClosed
	case <-e.gone:
		return e.goneErr
	}
}

// closedErr says why the endpoint can no longer be used, or nil.
func (e *Endpoint) closedErr() error {
	select {
	case <-e.closing:
		return net.ErrClosed
	case <-e.gone:
		return e.goneErr
	default:
		return nil
	}
}

// SetReadDeadline sets when a waiting or later Read gives up (zero: never).
func (e *Endpoint) SetReadDeadline(t time.Time) error {
	setDeadline(&e.rdl, e.rsig, t)
	return nil
}

// SetWriteDeadline sets when a waiting or later Write gives up (zero: never).
func (e *Endpoint) SetWriteDeadline(t time.Time) error {
	setDeadline(&e.wdl, e.wsig, t)
	return nil
}

func setDeadline(dl *atomic.Int64, sig chan struct{}, t time.Time) {
	v := int64(0)
	if !t.IsZero() {
		v = max(1, t.UnixNano())
	}
	dl.Store(v)
	signal(sig) // a waiting call looks at the new deadline
}

// signal wakes whoever waits on sig, or the next one to wait.
func signal(sig chan struct{}) {
	select {
	case sig <- struct{}{}:
	default:
	}
}

// spinRx spins on the port's receive ring, with its interrupt off and no
// system call, for the reply to the request Write just queued, within the
// endpoint's budget (the loop's policy: Poll, spinner). It reports whether
// the reply (or an error) is there for RecvTo.
func (e *Endpoint) spinRx() bool {
	k := e.kickAt.Swap(0)
	if k == 0 {
		return false
	}
	e.spin.kickAt = k
	if e.spin.budget <= 0 {
		return false
	}
	if !e.quiet {
		e.quiet = true
		e.port.QuietRx()
	}
	start := nanotime()
	deadline := start + int64(e.spin.budget)
	for i := 0; ; i++ {
		if e.port.TakeRx() {
			e.spin.reply(nanotime(), true)
			e.c.pc.spinHits.Add(1)
			return true
		}
		if i&7 == 7 && nanotime() >= deadline {
			e.spin.missed()
			e.c.pc.spinMisses.Add(1)
			return false
		}
	}
}

// serveEndpoint is the loop's part for an in-process client: after Poll,
// wake its reader or writer if the driver says waiting is over. It moves no
// bytes and so never counts as progress.
func (l *Loop) serveEndpoint(c *client) {
	e := c.ep
	e.serveWatch()
	rw, ww := e.rwait.Load(), e.wwait.Load()
	if !rw && ww == waitNone {
		return
	}
	recv, send, drained := c.port.Ready()
	if rw && recv {
		signal(e.rsig)
	}
	if (ww == waitSend && send) || (ww == waitDrain && drained) {
		signal(e.wsig)
	}
}
