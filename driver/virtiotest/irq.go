package virtiotest

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// IRQ is the fake function's interrupt source: a non-blocking eventfd in the
// Go poller, so Wait parks without a thread and ctx or Close unblock it.
//
// With MSI-X on, every vector fires the one eventfd. Without it the line is
// level-triggered INTx handled the uio_pci_generic way: an interrupt sets
// Interrupt Disable in the command register and fires once; while it stays
// set nothing fires; Unmask clears it and fires again at once if the ISR is
// still set.
type IRQ struct {
	f         *Function
	file      *os.File
	closeOnce sync.Once
	closeErr  error

	pollMu sync.Mutex
	poll   int // PollFDs' descriptor, -1: none
}

func newIRQ(f *Function) (*IRQ, error) {
	fd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("virtiotest: eventfd: %w", err)
	}
	return &IRQ{f: f, file: os.NewFile(uintptr(fd), "virtiotest-irq"), poll: -1}, nil
}

// PollFDs returns a descriptor of the interrupt eventfd for an event loop
// with its own epoll set (driver.PollIRQ): one for every vector, as the
// fake has one eventfd. It is a duplicate, so the Go poller also keeps
// watching the original (harmless in tests).
func (q *IRQ) PollFDs() ([]int, error) {
	q.pollMu.Lock()
	defer q.pollMu.Unlock()
	if q.poll >= 0 {
		return []int{q.poll}, nil
	}
	rc, err := q.file.SyscallConn()
	if err != nil {
		return nil, err
	}
	var fd int
	var derr error
	if err := rc.Control(func(s uintptr) {
		fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return nil, err
	}
	if derr != nil {
		return nil, fmt.Errorf("virtiotest: dup irq eventfd: %w", derr)
	}
	q.poll = fd
	return []int{fd}, nil
}

// MSIXVectors returns Options.MSIXVectors (0: INTx).
func (q *IRQ) MSIXVectors() int { return q.f.opts.MSIXVectors }

// Wait blocks until an interrupt fired since the previous Wait returned.
func (q *IRQ) Wait(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	woken := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		_ = q.file.SetReadDeadline(time.Now())
		close(woken)
	})
	var b [8]byte
	_, err := q.file.Read(b[:])
	if !stop() {
		<-woken
		_ = q.file.SetReadDeadline(time.Time{})
	}
	if err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) && ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("virtiotest: irq wait: %w", err)
	}
	return nil
}

// WaitVectors is Wait that also returns the MSI-X vectors signalled since
// the previous WaitVectors: bit v for vector v, bit 63 for any vector of 63
// or more. A vector signalled after the eventfd was read but before the
// set is taken is reported now and wakes the next Wait too (at worst with
// an empty set), so none is lost. Without MSI-X the set is empty.
func (q *IRQ) WaitVectors(ctx context.Context) (uint64, error) {
	if err := q.Wait(ctx); err != nil {
		return 0, err
	}
	q.f.mu.Lock()
	defer q.f.mu.Unlock()
	v := q.f.vectors
	q.f.vectors = 0
	return v, nil
}

// Unmask clears Interrupt Disable, as the uio driver does through the
// command register; a still-pending INTx fires again.
func (q *IRQ) Unmask() error {
	f := q.f
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cfg[0x05] &^= cmdIntxDisable >> 8
	f.raiseLocked()
	return nil
}

// fire adds one event to the eventfd. Called with f.mu held; the eventfd
// write never blocks.
func (q *IRQ) fire() {
	var b [8]byte
	binary.NativeEndian.PutUint64(b[:], 1)
	_, _ = q.file.Write(b[:]) // after Close nobody waits: nothing to do
	q.f.fired++
}

func (q *IRQ) close() error {
	q.closeOnce.Do(func() {
		q.closeErr = q.file.Close()
		q.pollMu.Lock()
		if q.poll >= 0 {
			unix.Close(q.poll)
			q.poll = -1
		}
		q.pollMu.Unlock()
	})
	return q.closeErr
}

// setIntxStatusLocked mirrors the INTx line into PCI status bit 3.
func (f *Function) setIntxStatusLocked() {
	if f.isr != 0 && !f.msixOnLocked() {
		f.cfg[0x06] |= statusIntx
	} else {
		f.cfg[0x06] &^= statusIntx
	}
}

// raiseLocked fires INTx if the line is asserted and not masked.
func (f *Function) raiseLocked() {
	f.setIntxStatusLocked()
	if f.msixOnLocked() || f.isr == 0 || f.cfg[0x05]&(cmdIntxDisable>>8) != 0 {
		return
	}
	f.cfg[0x05] |= cmdIntxDisable >> 8 // uio_pci_generic's handler masks the line
	f.irq.fire()
}

// signalLocked delivers an interrupt for vector after the ISR was updated.
func (f *Function) signalLocked(vector uint16) {
	if !f.msixOnLocked() {
		f.raiseLocked()
		return
	}
	f.setIntxStatusLocked()
	ctl := binary.LittleEndian.Uint16(f.cfg[msixCtlOff:])
	if vector == NoVector || ctl&msixFuncMask != 0 {
		return // no INTx fallback with MSI-X on (spec 4.1.5.1.2)
	}
	f.vectors |= 1 << min(vector, 63)
	f.irq.fire()
}

// Interrupts counts interrupts delivered to the eventfd.
func (f *Function) Interrupts() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.fired
}
