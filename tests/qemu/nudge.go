package qemu

import (
	"context"
	"sync/atomic"
	"time"
)

// A host→guest transfer can stall in QEMU itself, whatever the guest does:
// QEMU's main loop reads a port's chardev only while it watches the
// socket, and it stops watching while the port has no receive buffers or
// no guest open (can_read 0). It looks again on its next pass, and a
// guest driver's notify on the port's receive queue (guest_writable)
// wakes it for one. Linux's virtio_console sends PORT_OPEN without such a
// notify; under TCG the PORT_OPEN is handled on the vCPU thread, so a main
// loop with nothing else to do sleeps on while the host's bytes wait. The
// benchmark's kernel-driver arm stalled that way once for five minutes
// (2026-12-04). vserial's driver notifies after PORT_OPEN (driver/port.go).
//
// watchStall therefore has QEMU's main loop make a pass (any QMP command
// does) each time a transfer's host side has not moved for stallAfter,
// and counts those nudges: a kernel-driver round carries on and says so,
// and a vserial round that needed one has a bug to report.

// stallAfter is how long a transfer may stand still (a variable for the
// unit test).
var stallAfter = time.Second

// stallWatch follows a host writer's progress (moved, bytes written so
// far, out of total) until stop is called, and nudges QEMU's main loop
// when it stalls.
type stallWatch struct {
	moved  atomic.Int64
	total  int64
	nudges atomic.Int64
	done   chan struct{}
	ended  chan struct{}
}

// watchStall starts watching a transfer of total bytes into g; the writer
// adds to moved as it goes, and stop ends the watch. Once all is written
// nothing is left to stall.
func watchStall(ctx context.Context, g *Guest, total int64) *stallWatch {
	w := &stallWatch{total: total, done: make(chan struct{}), ended: make(chan struct{})}
	go func() {
		defer close(w.ended)
		t := time.NewTicker(stallAfter)
		defer t.Stop()
		last := int64(-1)
		for {
			select {
			case <-w.done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if now := w.moved.Load(); now != last || now >= w.total {
				last = now
				continue
			}
			if g.QMP == nil {
				continue
			}
			qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, err := g.QMP.Execute(qctx, "query-status", nil)
			cancel()
			if err == nil {
				w.nudges.Add(1)
			}
		}
	}()
	return w
}

// stop ends the watch and returns how many nudges it gave.
func (w *stallWatch) stop() int {
	close(w.done)
	<-w.ended
	return int(w.nudges.Load())
}
