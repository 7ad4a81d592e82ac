package pump

import "sync/atomic"

// loopCounters explain the loop's numbers: how often it ran, slept and
// woke, and what for. Written by the loop goroutine, read by Counters.
type loopCounters struct {
	passes, sleeps, epollWaits       atomic.Uint64
	irqWakes, cmdWakes, wakes        atomic.Uint64
	clientEvents, armPending         atomic.Uint64
	spinHits, spinMisses, spinNanos  atomic.Uint64
	peeks                            atomic.Uint64
	irqSpurious, irqStorms           atomic.Uint64
	policySwitches, rtCalls, rtPass  atomic.Uint64
	epollPolls, rawWaits             atomic.Uint64
	clientPollHits, clientPollMisses atomic.Uint64
	spaceEdges, parks, yields        atomic.Uint64
}

// portCounters are one port's loop counters, kept across its clients.
type portCounters struct {
	readv, writev, sends atomic.Uint64
	spinHits, spinMisses atomic.Uint64
	sessions             atomic.Uint64
}

// Counters returns the device-wide counters of the loop and of the driver
// beneath it, by name: loop passes, sleeps (epoll_wait calls), wake-ups by
// interrupt and by command, client descriptor events, spin hits, misses and
// time, and the driver's interrupts, kicks and INTx unmasks.
func (l *Loop) Counters() map[string]uint64 {
	s := &l.stats
	ds := l.dev.Stats()
	return map[string]uint64{
		"passes":             s.passes.Load(),
		"sleeps":             s.sleeps.Load(),
		"epoll_waits":        s.epollWaits.Load(),
		"irq_wakes":          s.irqWakes.Load(),
		"cmd_wakes":          s.cmdWakes.Load(),
		"wake_writes":        s.wakes.Load(),
		"client_events":      s.clientEvents.Load(),
		"arm_pending":        s.armPending.Load(),
		"spin_hits":          s.spinHits.Load(),
		"spin_misses":        s.spinMisses.Load(),
		"spin_us":            s.spinNanos.Load() / 1000,
		"peeks":              s.peeks.Load(),
		"irq_spurious":       s.irqSpurious.Load(),
		"irq_storms":         s.irqStorms.Load(),
		"batch_toggles":      s.policySwitches.Load(),
		"rt_calls":           s.rtCalls.Load(),
		"rt_passes":          s.rtPass.Load(),
		"epoll_polls":        s.epollPolls.Load(),
		"raw_waits":          s.rawWaits.Load(),
		"parks":              s.parks.Load(),
		"yields":             s.yields.Load(),
		"client_poll_hits":   s.clientPollHits.Load(),
		"client_poll_misses": s.clientPollMisses.Load(),
		"space_edges":        s.spaceEdges.Load(),
		"interrupts":         ds.Interrupts,
		"kicks":              ds.Kicks,
		"unmasks":            ds.Unmasks,
	}
}

// PortCounters returns port id's loop counters: readv and writev calls,
// batches sent (each one publish and at most one kick), spin hits and
// misses after its sends, and clients served.
func (l *Loop) PortCounters(id uint32) map[string]uint64 {
	pc := l.portCounters(id)
	return map[string]uint64{
		"readv":       pc.readv.Load(),
		"writev":      pc.writev.Load(),
		"sends":       pc.sends.Load(),
		"spin_hits":   pc.spinHits.Load(),
		"spin_misses": pc.spinMisses.Load(),
		"sessions":    pc.sessions.Load(),
	}
}
