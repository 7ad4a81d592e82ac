package qemu

import (
	"bufio"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestStallWatchNudgesOnlyAStandingTransfer: a watch over a transfer that
// moves, or that has finished, runs no QMP command; one over a transfer
// that stands still runs query-status once per stallAfter and counts it.
func TestStallWatchNudgesOnlyAStandingTransfer(t *testing.T) {
	old := stallAfter
	stallAfter = 40 * time.Millisecond
	t.Cleanup(func() { stallAfter = old })
	var queries atomic.Int32
	sock := fakeQMP(t, func(r *bufio.Reader, w io.Writer) {
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			if strings.Contains(line, "query-status") {
				queries.Add(1)
			}
			io.WriteString(w, `{"return": {"status": "running"}}`+"\n")
		}
	})
	ctx, q := dialFakeQMP(t, sock)
	g := &Guest{QMP: q}

	for _, c := range []struct {
		name      string
		move, fin bool
		nudged    bool
	}{
		{"moving", true, false, false},
		{"finished", false, true, false},
		{"standing", false, false, true},
	} {
		before := queries.Load()
		w := watchStall(ctx, g, 1<<20)
		if c.fin {
			w.moved.Store(w.total)
		}
		for range 40 { // 400 ms: ten times stallAfter
			if c.move {
				w.moved.Add(1)
			}
			time.Sleep(10 * time.Millisecond)
		}
		n := w.stop()
		got := int(queries.Load() - before)
		switch {
		case n != got:
			t.Errorf("%s: the watch counted %d nudges, QMP saw %d query-status", c.name, n, got)
		case c.nudged && n < 2:
			t.Errorf("%s: %d nudges in ten stall periods, want several", c.name, n)
		case !c.nudged && n != 0:
			t.Errorf("%s: %d nudges, want none", c.name, n)
		}
	}
}
