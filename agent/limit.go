package agent

// Bounds on what local clients can make the agent hold or say: slots on
// the control socket (per peer uid and in all), a rate limit for log lines
// and events that clients trigger, and the back-off of accept loops.

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vserial/vserial/internal/ratelimit"
)

// Limits of the control socket.
const (
	// MaxControlConns bounds the control connections being answered at
	// once (a request not read yet, or a status answer being written);
	// one more is answered with an error line and closed. Event streams
	// have their own bounds (MaxSubscribers, MaxSubscribersPerUID).
	MaxControlConns = 256
	// MaxControlConnsPerUID bounds them per peer uid, so one user cannot
	// take every slot.
	MaxControlConnsPerUID = 32
	// MaxSubscribersPerUID bounds the event streams of one peer uid.
	MaxSubscribersPerUID = 16
)

// controlLimits are the agent's bounds on its control socket.
type controlLimits struct {
	uidOf     func(net.Conn) uint32 // the peer's uid; a seam for tests
	snapWait  time.Duration         // bounds a snapshot's write (events.go)
	mu        sync.Mutex
	slots     slots // control connections being answered
	refused   atomic.Uint64
	refuseLog *ratelimit.Gate
	acceptLog *ratelimit.Gate
}

func (a *Agent) initControlLimits() {
	l := &a.ctl
	l.uidOf = peerUID
	l.snapWait = snapshotWait
	l.slots = slots{total: MaxControlConns, perUID: MaxControlConnsPerUID}
	// A burst, then a line a second: enough to see what happens.
	l.refuseLog = ratelimit.New(5, 1)
	l.acceptLog = ratelimit.New(5, 1)
}

// unknownUID is the bucket of peers whose credentials the kernel does not
// give ((uid_t)-1 is no user's uid).
const unknownUID = ^uint32(0)

// peerUID returns the uid of c's peer (SO_PEERCRED), or unknownUID.
func peerUID(c net.Conn) uint32 {
	if uc, ok := c.(*net.UnixConn); ok {
		if _, uid := peerCred(uc); uid != nil {
			return *uid
		}
	}
	return unknownUID
}

// slots counts holders per uid against a total and a per-uid limit.
// The zero value is empty; its user guards it.
type slots struct {
	total, perUID int
	n             int
	byUID         map[uint32]int
}

// take takes a slot for uid, or reports false when uid or everyone is at
// the limit.
func (s *slots) take(uid uint32) bool {
	if s.n >= s.total || s.byUID[uid] >= s.perUID {
		return false
	}
	if s.byUID == nil {
		s.byUID = make(map[uint32]int)
	}
	s.n++
	s.byUID[uid]++
	return true
}

// give returns a slot taken by uid.
func (s *slots) give(uid uint32) {
	s.n--
	if s.byUID[uid]--; s.byUID[uid] <= 0 {
		delete(s.byUID, uid)
	}
}

// Back-off of an accept loop after an error (EMFILE, ENFILE, ENOBUFS...):
// the wait doubles from acceptWaitMin up to acceptWaitMax, and starts again
// after a successful accept.
const (
	acceptWaitMin = 5 * time.Millisecond
	acceptWaitMax = time.Second
)

// reset starts the schedule again from min.
func (b *backoff) reset() { b.next = b.min }

// acceptPause is the error path of an accept loop: it logs err (within
// gate) and waits the back-off b gives. It returns false when ctx ends
// first.
func acceptPause(ctx context.Context, b *backoff, gate *ratelimit.Gate, logf func(msg string, args ...any), err error) bool {
	wait := b.failed()
	if ok, n := gate.Allow(); ok {
		logf("accept failed; backing off", "err", err, "retry_in", wait, "lines_suppressed_before", n)
	}
	return sleepCtx(ctx, wait)
}
