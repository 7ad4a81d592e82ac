package agent

import (
	"net"
	"time"
)

// Hooks for the tests of package agent_test.

// SetEventQueue sets the per-subscriber queue length of later
// subscriptions.
func SetEventQueue(a *Agent, n int) {
	a.ev.mu.Lock()
	a.ev.queue = n
	a.ev.mu.Unlock()
}

// SetPeerUID makes the agent take the peer uid of a control connection
// from f instead of SO_PEERCRED. Call it before ServeControl.
func SetPeerUID(a *Agent, f func(net.Conn) uint32) { a.ctl.uidOf = f }

// SetSnapshotWait sets how long the write of a stream's snapshot may take.
func SetSnapshotWait(a *Agent, d time.Duration) { a.ctl.snapWait = d }

// SetAfterBind makes socket creation call f with the path of each socket
// it has just bound, before it sets the socket's owner and mode.
func SetAfterBind(a *Agent, f func(path string)) { a.afterBind = f }

// Refused returns how many control connections and subscriptions the
// agent refused for being beyond a limit.
func Refused(a *Agent) uint64 { return a.ctl.refused.Load() }
