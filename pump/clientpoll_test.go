package pump

import (
	"context"
	"runtime"
	"testing"
	"time"
)

// TestClientPollWaitsForTheNextRequest: on more than one CPU the loop
// looks for a client's next request without sleeping after handing it a
// small reply. The client taking that reply frees the loop's end of the
// socket, which signals EPOLLOUT; the loop does not watch for it unless a
// client's buffer was full (watchSpace), so no such edge may reach it
// (the mutant that keeps EPOLLOUT in the interest gets one per round
// trip and fails here; before watchSpace the poll took that edge for the
// request and slept once per round trip, woken by the request). The
// test's client pauses between reply and request, so that the two would
// not reach the poll as one.
func TestClientPollWaitsForTheNextRequest(t *testing.T) {
	if runtime.NumCPU() < 2 {
		t.Skip("the client poll is for guests with more than one CPU; the client and the loop need one each")
	}
	was := multiCPU
	t.Cleanup(func() { multiCPU = was }) // runs after the rig's cleanup
	multiCPU = true
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(max(2, runtime.GOMAXPROCS(0))))

	r := newRig(t, rigOpts{poll: Poll{Mode: PollFixed, Budget: 5 * time.Millisecond}})
	s := r.attach(1)
	ctx, cancel := context.WithCancel(r.ctx)
	defer cancel()
	go echoHost(ctx, r)
	const n = 300
	roundTrip := func(i int) {
		b := []byte{byte(i)}
		if _, err := s.conn.Write(b); err != nil {
			t.Fatal(err)
		}
		if got := readFull(t, s.conn, 1); got[0] != b[0] {
			t.Fatalf("round trip %d: got %d, want %d", i, got[0], b[0])
		}
		// A client that thinks before its next request, as a program in
		// a guest under TCG takes a few hundred µs to: the edge of the
		// reply taken reaches the poll alone, well before the request.
		time.Sleep(300 * time.Microsecond)
	}
	roundTrip(0) // the loop's first sleep and wake-up are not the poll's
	before := r.l.Counters()
	for i := 1; i <= n; i++ {
		roundTrip(i)
	}
	c := r.l.Counters()
	waits := c["epoll_waits"] - before["epoll_waits"]
	hits := c["client_poll_hits"] - before["client_poll_hits"]
	space := c["space_edges"] - before["space_edges"]
	t.Logf("%d round trips: %d sleeps, %d poll hits, %d EPOLLOUT edges", n, waits, hits, space)
	if space > 0 {
		t.Errorf("%d EPOLLOUT edges reached the loop in %d round trips, where no client was ever full: %v", space, n, c)
	}
	if waits > n/2 {
		t.Errorf("the loop slept %d times in %d round trips within a 5 ms poll: the poll did not wait for the next request (%d hits)", waits, n, hits)
	}
}
