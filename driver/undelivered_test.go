package driver

import (
	"bytes"
	"testing"
	"time"
)

// queueThrottled sends each chunk as one transmit buffer on port 1 while
// the host does not read, so they stay in flight.
func queueThrottled(t *testing.T, r *rig, p *Port, chunks ...[]byte) {
	t.Helper()
	r.until("host connected", p.HostConnected)
	if err := r.m.SetThrottled(1, true); err != nil {
		t.Fatal(err)
	}
	for _, c := range chunks {
		if _, err := p.Send(r.ctx, bytes.NewReader(c)); err != nil {
			t.Fatal(err)
		}
	}
}

// Close gives the device time to take what is in flight: a host that
// starts reading again during the flush gets every byte.
func TestCloseFlushesInFlightTransmit(t *testing.T) {
	r := newRig(t, rigOpts{cfg: Config{TxBuffers: 4, CloseFlush: 5 * time.Second}, plug: plugPorts(portSpec{id: 1, name: "p", host: true})})
	p := r.port(1, "p")
	queueThrottled(t, r, p, []byte("abc"), []byte("defg"))
	go func() {
		time.Sleep(100 * time.Millisecond)
		r.m.SetThrottled(1, false)
	}()
	if err := r.d.Close(); err != nil {
		t.Fatal(err)
	}
	if got := string(r.m.HostRead(1)); got != "abcdefg" {
		t.Fatalf("host got %q after Close, want every queued byte", got)
	}
	if st := p.Stats(); st.Undelivered != 0 || r.d.Stats().Undelivered != 0 {
		t.Fatalf("undelivered %d/%d, want 0", st.Undelivered, r.d.Stats().Undelivered)
	}
}

// A host that never reads costs Close at most its flush bound, and the
// bytes it held are counted and logged, never dropped without a word.
func TestCloseCountsUndeliveredTransmit(t *testing.T) {
	const flush = 200 * time.Millisecond
	r := newRig(t, rigOpts{cfg: Config{TxBuffers: 4, CloseFlush: flush}, plug: plugPorts(portSpec{id: 1, name: "p", host: true})})
	p := r.port(1, "p")
	queueThrottled(t, r, p, []byte("abc"), []byte("defg"))
	t0 := time.Now()
	if err := r.d.Close(); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(t0); took < flush || took > flush+testTimeout/4 {
		t.Errorf("Close took %v, want its flush bound %v (and not much more)", took, flush)
	}
	if st := p.Stats(); st.Undelivered != 7 {
		t.Errorf("port undelivered %d, want 7", st.Undelivered)
	}
	if n := r.d.Stats().Undelivered; n != 7 {
		t.Errorf("device undelivered %d, want 7", n)
	}
	if !r.log.Contains("not delivered") || !r.log.Contains("undelivered=7") || !r.log.Contains(`why="device closed"`) {
		t.Errorf("no undelivered line in the log:\n%s", r.log)
	}
}

// A negative CloseFlush skips the wait; the count stays.
func TestCloseWithoutFlushCountsUndelivered(t *testing.T) {
	r := newRig(t, rigOpts{cfg: Config{TxBuffers: 4, CloseFlush: -1}, plug: plugPorts(portSpec{id: 1, name: "p", host: true})})
	p := r.port(1, "p")
	queueThrottled(t, r, p, []byte("xy"))
	t0 := time.Now()
	if err := r.d.Close(); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(t0); took > time.Second {
		t.Errorf("Close without a flush took %v", took)
	}
	if st := p.Stats(); st.Undelivered != 2 {
		t.Errorf("port undelivered %d, want 2", st.Undelivered)
	}
}

// A device reset drops what the device had not taken: counted and logged.
func TestResetCountsUndelivered(t *testing.T) {
	r := newRig(t, rigOpts{cfg: Config{TxBuffers: 4}, plug: plugPorts(portSpec{id: 1, name: "p", host: true})})
	p := r.port(1, "p")
	queueThrottled(t, r, p, []byte("12345"))
	r.m.NeedsReset()
	r.until("device reset", func() bool { return r.d.Stats().Resets == 1 })
	if n := p.Stats().Undelivered; n != 5 {
		t.Errorf("port undelivered %d after the reset, want 5", n)
	}
	if !r.log.Contains(`why="device reset"`) {
		t.Errorf("no undelivered line for the reset:\n%s", r.log)
	}
}
