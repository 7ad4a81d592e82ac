package uio

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// IRQ is the function's INTx interrupt as uio_pci_generic delivers it. It
// implements driver.IRQ.
//
// Protocol (VIRTIO-NOTES §9.3): the kernel masks INTx (command bit 10) and
// bumps a counter on each interrupt; Wait returns when the counter has moved;
// the driver then reads the device's ISR (which lowers the line) and services
// its queues; Unmask clears the mask so the next interrupt can arrive. An
// interrupt raised while masked is held by the device and fires on Unmask.
//
// Meant for one interrupt loop: concurrent Waits are serialised, and one
// queued behind another does not watch its context until it gets its turn.
// Unmask and Count may be called from any goroutine.
type IRQ struct {
	f      *os.File // /dev/uioN, non-blocking, in the poller
	cfg    *Config
	closed atomic.Bool

	mu    sync.Mutex    // serialises Wait
	count atomic.Uint32 // last interrupt count read
}

func newIRQ(f *os.File, cfg *Config) *IRQ { return &IRQ{f: f, cfg: cfg} }

// MSIXVectors is 0: uio_pci_generic has INTx only.
func (q *IRQ) MSIXVectors() int { return 0 }

// Count returns the interrupt count last read by Wait (the kernel's total
// for this device), for statistics.
func (q *IRQ) Count() uint32 {
	return q.count.Load()
}

// Wait blocks until an interrupt has fired since the previous Wait, ctx is
// done (returning ctx.Err()) or the IRQ is closed (returning an error that
// matches os.ErrClosed). It sleeps in the Go poller on /dev/uioN, which is
// readable once the kernel's count differs from what this descriptor last
// read; a read returns exactly 4 bytes, the count in CPU byte order.
func (q *IRQ) Wait(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	// Cancellation moves the read deadline into the past, which wakes the
	// poller; the next Wait clears it again.
	if ctx.Done() != nil {
		stop := context.AfterFunc(ctx, func() { q.f.SetReadDeadline(time.Unix(1, 0)) })
		defer stop()
	}
	if err := q.f.SetReadDeadline(time.Time{}); err != nil {
		return q.wrap(err)
	}
	var b [4]byte
	for {
		n, err := q.f.Read(b[:])
		if errors.Is(err, os.ErrDeadlineExceeded) {
			if cerr := ctx.Err(); cerr != nil {
				return cerr
			}
			// A cancellation of an earlier Wait's context landed late;
			// it does not concern this one.
			if err := q.f.SetReadDeadline(time.Time{}); err != nil {
				return q.wrap(err)
			}
			continue
		}
		if err != nil {
			return q.wrap(err)
		}
		if n != len(b) {
			return q.wrap(fmt.Errorf("short read: %d bytes, want 4", n))
		}
		q.count.Store(binary.NativeEndian.Uint32(b[:]))
		return nil
	}
}

// Unmask re-enables INTx after the interrupt has been serviced (clears
// Interrupt Disable, bit 10 of the command register). Writing to /dev/uioN
// is not an option: uio_pci_generic has no irqcontrol and returns ENOSYS.
func (q *IRQ) Unmask() error {
	if err := q.cfg.unmaskIntx(); err != nil {
		return fmt.Errorf("uio: irq unmask: %w", err)
	}
	return nil
}

// wrap reports any failure after close as os.ErrClosed: depending on where
// Close lands, os.File reports it as os.ErrClosed (Read) or as the poller's
// own "use of closed file" (SetReadDeadline).
func (q *IRQ) wrap(err error) error {
	if q.closed.Load() && !errors.Is(err, os.ErrClosed) {
		err = fmt.Errorf("%w (%v)", os.ErrClosed, err)
	}
	return fmt.Errorf("uio: irq wait: %w", err)
}

// close closes /dev/uioN, which wakes a blocked Wait with os.ErrClosed.
// Closing the last descriptor also makes the kernel clear Bus Master.
func (q *IRQ) close() error {
	if q.closed.Swap(true) {
		return nil
	}
	return q.f.Close()
}
