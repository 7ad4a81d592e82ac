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

	"golang.org/x/sys/unix"
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

	// raw is a descriptor of /dev/uioN outside the Go poller, handed to an
	// event loop by PollFDs (-1: none yet). Guarded by rawMu, not mu: close
	// must not wait for a blocked Wait, which it is there to wake.
	rawMu sync.Mutex
	raw   int
}

func newIRQ(f *os.File, cfg *Config) *IRQ { return &IRQ{f: f, cfg: cfg, raw: -1} }

// PollFDs hands the interrupt to an event loop with its own epoll set: it
// returns a descriptor of /dev/uioN that is readable once per interrupt
// (uio_poll reports EPOLLIN while the kernel's count differs from what the
// descriptor last read, and each interrupt wakes its waiters, so an
// edge-triggered watch gets one event per interrupt without a read).
//
// The descriptor is a new open of the device, outside the Go poller, and
// the poller's own descriptor is closed: otherwise every interrupt would
// also wake the runtime's network poller thread for nothing. Wait fails
// from then on; Unmask still works.
//
// Call it before the device is brought up: uio_pci_generic's release hook
// clears Bus Master on every close of /dev/uioN, not only the last, so the
// closing of the poller's descriptor stops the device's DMA until the
// driver sets Bus Master again (bring-up does).
func (q *IRQ) PollFDs() ([]int, error) {
	q.rawMu.Lock()
	defer q.rawMu.Unlock()
	if q.raw >= 0 {
		return []int{q.raw}, nil
	}
	if q.closed.Load() {
		return nil, fmt.Errorf("uio: irq: %w", os.ErrClosed)
	}
	fd, err := unix.Open(q.f.Name(), unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("uio: irq: open %s: %w", q.f.Name(), err)
	}
	// The new descriptor keeps the device open (and Bus Master on) while
	// the poller's goes.
	q.raw = fd
	if err := q.f.Close(); err != nil {
		return nil, fmt.Errorf("uio: irq: close poller descriptor: %w", err)
	}
	return []int{fd}, nil
}

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
	q.rawMu.Lock()
	raw := q.raw
	q.raw = -1
	q.rawMu.Unlock()
	if raw >= 0 {
		// The poller's descriptor is already closed.
		return unix.Close(raw)
	}
	return q.f.Close()
}
