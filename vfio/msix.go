package vfio

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vserial/vserial/vfio/internal/vfioabi"
	"golang.org/x/sys/unix"
)

// MSIX is a function's MSI-X vectors as VFIO delivers them: one eventfd
// per vector (VFIO_DEVICE_SET_IRQS, DATA_EVENTFD|ACTION_TRIGGER), all of
// them in one epoll set whose descriptor sits in the Go poller. It
// implements driver.IRQ and driver.VectorIRQ: Wait returns when any vector
// fired and drains every eventfd, WaitVectors also says which; Unmask is
// a no-op (MSI-X is edge-like, nothing to re-arm).
//
// The epoll set is level-triggered on the eventfds; the Go poller watches
// the epoll descriptor itself (readable while any eventfd has a count), so
// a wait costs no CPU and Close or a cancelled context wakes it.
type MSIX struct {
	efds   []int    // one eventfd per vector, non-blocking
	ep     *os.File // the epoll set, non-blocking, in the poller
	rc     syscall.RawConn
	closed atomic.Bool

	mu     sync.Mutex // serialises Wait
	counts []atomic.Uint64
}

// newMSIX creates n eventfds and the epoll set watching them. The caller
// routes the eventfds to the device (FDs) and closes the MSIX on failure.
func newMSIX(n int) (_ *MSIX, err error) {
	m := &MSIX{counts: make([]atomic.Uint64, n)}
	defer func() {
		if err != nil {
			m.close()
		}
	}()
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("epoll set non-blocking: %w", err)
	}
	// Non-blocking before NewFile, so the descriptor joins the poller.
	m.ep = os.NewFile(uintptr(epfd), "vfio-msix-epoll")
	if m.rc, err = m.ep.SyscallConn(); err != nil {
		return nil, err
	}
	for i := 0; i < n; i++ {
		fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
		if err != nil {
			return nil, fmt.Errorf("eventfd for vector %d: %w", i, err)
		}
		m.efds = append(m.efds, fd)
		ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(i)}
		if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
			return nil, fmt.Errorf("epoll add vector %d: %w", i, err)
		}
	}
	return m, nil
}

// fds are the eventfds in vector order, for VFIO_DEVICE_SET_IRQS.
func (m *MSIX) fds() []int32 {
	out := make([]int32, len(m.efds))
	for i, fd := range m.efds {
		out[i] = int32(fd)
	}
	return out
}

// MSIXVectors is the number of vectors routed to eventfds.
func (m *MSIX) MSIXVectors() int { return len(m.efds) }

// Counts returns how many interrupts each vector delivered (eventfd counts
// drained by Wait), for statistics.
func (m *MSIX) Counts() []uint64 {
	out := make([]uint64, len(m.counts))
	for i := range m.counts {
		out[i] = m.counts[i].Load()
	}
	return out
}

// Wait blocks until at least one vector has fired since the previous Wait,
// ctx is done (returning ctx.Err()) or the MSIX is closed (an error that
// matches os.ErrClosed). It drains every eventfd before returning.
func (m *MSIX) Wait(ctx context.Context) error {
	_, err := m.WaitVectors(ctx)
	return err
}

// WaitVectors is Wait that returns the vectors whose eventfds it drained:
// bit v for vector v, bit 63 for vectors of 63 and more. A vector that
// fires after its eventfd was read stays counted in the eventfd and wakes
// the next call.
func (m *MSIX) WaitVectors(ctx context.Context) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.ep == nil {
		return 0, m.wrap(fmt.Errorf("%w: the vectors were handed to an event loop (PollFDs)", os.ErrClosed))
	}
	if ctx.Done() != nil {
		stop := context.AfterFunc(ctx, func() { m.ep.SetReadDeadline(time.Unix(1, 0)) })
		defer stop()
	}
	if err := m.ep.SetReadDeadline(time.Time{}); err != nil {
		return 0, m.wrap(err)
	}
	for {
		var werr error
		var fired uint64
		err := m.rc.Read(func(fd uintptr) bool {
			var evs [1]unix.EpollEvent
			n, err := unix.EpollWait(int(fd), evs[:], 0)
			if errors.Is(err, unix.EINTR) {
				return false
			}
			if err != nil {
				werr = fmt.Errorf("epoll_wait: %w", err)
				return true
			}
			if n == 0 {
				return false // nothing yet: sleep in the poller
			}
			fired, err = m.drain()
			if err != nil {
				werr = err
				return true
			}
			return fired != 0
		})
		if errors.Is(err, os.ErrDeadlineExceeded) {
			if cerr := ctx.Err(); cerr != nil {
				return 0, cerr
			}
			// A late cancellation of an earlier Wait's context.
			if err := m.ep.SetReadDeadline(time.Time{}); err != nil {
				return 0, m.wrap(err)
			}
			continue
		}
		if err != nil {
			return 0, m.wrap(err)
		}
		if werr != nil {
			return 0, m.wrap(werr)
		}
		return fired, nil
	}
}

// drain reads every eventfd's counter (8 bytes; EAGAIN when it is zero) and
// returns the vectors that had a count.
func (m *MSIX) drain() (fired uint64, err error) {
	var b [8]byte
	for i, fd := range m.efds {
		n, err := unix.Read(fd, b[:])
		if errors.Is(err, unix.EAGAIN) {
			continue
		}
		if err != nil {
			return fired, fmt.Errorf("read eventfd of vector %d: %w", i, err)
		}
		if n != 8 {
			return fired, fmt.Errorf("read eventfd of vector %d: %d bytes", i, n)
		}
		m.counts[i].Add(ne.Uint64(b[:]))
		fired |= 1 << min(i, 63)
	}
	return fired, nil
}

// PollFDs hands the vectors to an event loop with its own epoll set: the
// eventfds in vector order (an edge-triggered watch gets one event per
// signal; the counts may be left to accumulate). The inner epoll set and
// its place in the Go poller are closed, so a signal wakes only the loop;
// Wait fails from then on.
func (m *MSIX) PollFDs() ([]int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed.Load() {
		return nil, fmt.Errorf("vfio: irq: %w", os.ErrClosed)
	}
	if m.ep != nil {
		if err := m.ep.Close(); err != nil {
			return nil, fmt.Errorf("vfio: irq: close epoll set: %w", err)
		}
		m.ep = nil
	}
	return append([]int(nil), m.efds...), nil
}

// Unmask does nothing: MSI-X vectors need no re-arming.
func (m *MSIX) Unmask() error { return nil }

func (m *MSIX) wrap(err error) error {
	if m.closed.Load() && !errors.Is(err, os.ErrClosed) {
		err = fmt.Errorf("%w (%v)", os.ErrClosed, err)
	}
	return fmt.Errorf("vfio: irq wait: %w", err)
}

// close closes the epoll set (waking a blocked Wait with os.ErrClosed) and
// the eventfds. The device must no longer signal them (SET_IRQS disabled
// first), though a late signal into a closed eventfd is harmless.
func (m *MSIX) close() error {
	if m.closed.Swap(true) {
		return nil
	}
	var errs []error
	if m.ep != nil {
		errs = append(errs, m.ep.Close())
	}
	for _, fd := range m.efds {
		errs = append(errs, unix.Close(fd))
	}
	return errors.Join(errs...)
}

// maxVectors is the most MSI-X vectors Open routes: the driver puts
// configuration changes and control on vector 0 and spreads the ports'
// data queues over the others (QEMU's default is vectors=2: all data on
// vector 1). Each routed vector costs an eventfd and a host interrupt, so
// the count is capped; more ports share vectors.
const maxVectors = 16

// enableMSIX routes up to maxVectors MSI-X vectors to eventfds. This turns
// on the function's MSI-X enable bit, which must happen before the driver
// looks at the legacy register layout (its device config moves to offset
// 24). INTx through VFIO is not used: it was not delivered in our tests.
func (f *Function) enableMSIX() error {
	ii, err := f.sys.irqInfo(f.devFD, vfioabi.PCIMSIXIRQ)
	if err != nil {
		return err
	}
	if ii.Count == 0 {
		return fmt.Errorf("%w: the function has no MSI-X vectors (vserial drives VFIO functions through MSI-X only)", ErrNoMSIX)
	}
	if ii.Flags&vfioabi.IRQInfoEventfd == 0 {
		return fmt.Errorf("%w: MSI-X cannot signal eventfds (irq info flags %#x)", ErrNoMSIX, ii.Flags)
	}
	n := min(int(ii.Count), maxVectors)
	m, err := newMSIX(n)
	if err != nil {
		return err
	}
	f.irq = m
	return f.sys.setIRQs(f.devFD, vfioabi.PCIMSIXIRQ, 0, m.fds())
}
