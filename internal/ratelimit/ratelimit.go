// Package ratelimit bounds lines and events that something outside the
// agent's control can trigger at will (a device toggling its ports, a
// client reconnecting in a loop): a burst goes through, then a steady rate,
// and what is held back is counted so that the next one let through can
// say how many were. The bucket is golang.org/x/time/rate's; this package
// adds only the count. It imports nothing of vserial.
package ratelimit

import (
	"sync"

	"golang.org/x/time/rate"
)

// Gate is a token bucket with a count of what it held back. Its methods
// may be called from several goroutines.
type Gate struct {
	lim  *rate.Limiter
	mu   sync.Mutex
	held uint64
}

// New returns a gate that lets burst through at once, then perSecond a
// second.
func New(burst int, perSecond float64) *Gate {
	return &Gate{lim: rate.NewLimiter(rate.Limit(perSecond), burst)}
}

// Allow reports whether one more may go now. When it may, held is how many
// were held back since the last one that went (and the count starts
// again); when it may not, the count grows by one and held is 0.
func (g *Gate) Allow() (ok bool, held uint64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.lim.Allow() {
		g.held++
		return false, 0
	}
	held, g.held = g.held, 0
	return true, held
}
