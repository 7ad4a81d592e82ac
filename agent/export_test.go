package agent

// Hooks for the tests of package agent_test.

// SetEventQueue sets the per-subscriber queue length of later
// subscriptions.
func SetEventQueue(a *Agent, n int) {
	a.ev.mu.Lock()
	a.ev.queue = n
	a.ev.mu.Unlock()
}
