package pump

// Readiness watches of an in-process endpoint: a caller that waits for the
// port to become readable or writable without reading or writing (poll(2)
// on a device node that serves the endpoint) names what it waits for; the
// loop, after a pass in which the port has bytes for Read (WatchRead) or
// room for Write (WatchWrite), clears the watch and signals the channel.
// The caller sets the watch before it looks at Ready, so a change between
// the two is never lost (at worst it hears of it twice).

// What a watch waits for.
const (
	WatchRead  = 1
	WatchWrite = 2
)

// Watch sets what the endpoint waits for (0: nothing) and returns the
// channel the loop signals when it is there.
func (e *Endpoint) Watch(what int32) <-chan struct{} {
	e.pwatch.Store(what)
	if what != 0 {
		e.loop.wake() // a pass now: the loop arms what the watch needs
	}
	return e.psig
}

// WatchAlso adds what to what the endpoint waits for (a non-blocking
// Read or Write that found nothing to do: its caller hears when it may
// try again).
func (e *Endpoint) WatchAlso(what int32) {
	e.pwatch.Or(what)
	e.loop.wake()
}

// Ready says whether Read would return bytes (or an error) without
// waiting, and whether Write would take bytes without waiting.
func (e *Endpoint) Ready() (read, write bool) {
	read, write, _ = e.port.Ready()
	return read, write
}

// serveWatch is serveEndpoint's part for a watch.
func (e *Endpoint) serveWatch() {
	w := e.pwatch.Load()
	if w == 0 {
		return
	}
	recv, send, _ := e.port.Ready()
	if w&WatchRead != 0 && recv || w&WatchWrite != 0 && send {
		e.pwatch.CompareAndSwap(w, 0)
		signal(e.psig)
	}
}
