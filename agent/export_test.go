package agent

// Hooks for the tests of package agent_test.

// SetEventQueue sets the per-subscriber queue length of later
// subscriptions.
func SetEventQueue(a *Agent, n int) {
	a.ev.mu.Lock()
	a.ev.queue = n
	a.ev.mu.Unlock()
}

// Subscribers returns how many event streams are open.
func Subscribers(a *Agent) int {
	a.ev.mu.Lock()
	defer a.ev.mu.Unlock()
	return len(a.ev.subs)
}
