package pump

// In-process clients (Attach, Endpoint), step by step.
//
// Attach holds a port in-process: an Endpoint is a client
// with no descriptor. Its Read and Write run in the caller's goroutine
// and call Port.RecvTo and Port.SendFrom themselves, copying once
// between the caller's slice and the device's buffers under the
// driver's lock; the loop never calls them for such a client (that is
// what makes the direct calls safe), it only wakes a waiting caller
// through a channel when Port.Ready says waiting is over. A caller
// announces that it waits before it looks, so no wake-up is lost. A
// writer that finds every transmit buffer with the device, and a
// Close that waits for the device to take what was written, wake the
// loop once so that its next Arm asks for the transmit interrupt.
// After a small Write (a request), Read spins for the reply itself,
// within the loop's polling policy and a budget learnt like a socket
// client's: the port's receive interrupt off (Port.QuietRx), the ring
// looked at without a system call (Port.TakeRx); before it waits it
// turns the interrupt on again and takes what came meanwhile
// (Port.ArmRx), as the loop's Arm does. The semantics are Serve's: one
// client per port, writes wait while the host is away, errors are the
// driver's.

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vserial/vserial/driver"
	"github.com/vserial/vserial/internal/guard"
)

// An in-process endpoint is a client with no descriptor: a Go program that
// holds a port through Attach. Its Read and Write run in the caller's
// goroutine and call the port's RecvTo and SendFrom themselves, under the
// driver's lock, copying once between the caller's slice and the device's
// buffers. That is allowed because the loop never calls RecvTo or SendFrom
// for such a client: it only wakes the caller (a channel, no system call)
// when the driver says waiting is over (Port.Ready after Poll: bytes
// arrived, a transmit buffer came back, the host connected, the port went,
// a reset). The caller announces that it waits before it looks, so a
// wake-up between its look and its sleep is kept in the channel and never
// lost.
//
// The loop sleeps with the device's interrupts armed, so bytes that arrive
// for a waiting reader always wake it. A writer that finds every transmit
// buffer with the device wakes the loop once (its next Arm then asks for
// the transmit interrupt); so does a Close waiting for the device to take
// what was written.

// testHookReadWait runs in Read between its look and its wait (a test
// lands host bytes there).
var testHookReadWait atomic.Pointer[func(*Endpoint)]

// ErrDeadline is what Read and Write return when their deadline passed:
// os.ErrDeadlineExceeded, as for a net.Conn.
var ErrDeadline = os.ErrDeadlineExceeded

// Waits of an endpoint's writer side (Endpoint.wwait).
const (
	waitNone  = iota
	waitSend  // for a free transmit buffer, or the host
	waitDrain // for the device to take everything queued
)

// Endpoint is a port held in-process. Read and Write may be called from
// different goroutines; concurrent Reads (or Writes) take turns.
type Endpoint struct {
	loop *Loop
	c    *client
	port *driver.Port

	rmu, wmu     sync.Mutex // one Read, one Write at a time
	rsig, wsig   chan struct{}
	rwait        atomic.Bool
	wwait        atomic.Int32
	pwatch       atomic.Int32  // WatchRead|WatchWrite (inproc_watch.go)
	psig         chan struct{} // signalled when pwatch is met
	rdl, wdl     atomic.Int64  // deadlines, Unix ns; 0: none
	rtimer       *time.Timer
	wtimer       *time.Timer
	closing      chan struct{} // closed by Close
	gone         chan struct{} // closed when the loop let go of the client
	goneErr      error         // why, once gone is closed
	closeOnce    sync.Once
	closeErr     error
	dst          copyOut
	src          copyIn
	bytesRead    atomic.Uint64
	bytesWritten atomic.Uint64

	// The reply spin (Read's side): kickAt is when Write last queued a
	// small request (0: none since); spin and quiet are the reader's.
	kickAt atomic.Int64
	spin   spinner
	quiet  bool // the receive interrupt is off (Port.QuietRx)
}

// copyOut is the BuffersWriter Read hands RecvTo: it copies into dst.
type copyOut struct{ dst []byte }

func (c *copyOut) WriteBuffers(bufs [][]byte) (int, error) {
	n := 0
	for _, b := range bufs {
		k := copy(c.dst[n:], b)
		n += k
		if k < len(b) {
			break
		}
	}
	return n, nil
}

// copyIn is the BuffersReader Write hands SendFrom: it copies from src.
type copyIn struct{ src []byte }

func (c *copyIn) ReadBuffers(bufs [][]byte) (int, error) {
	n := 0
	for _, b := range bufs {
		if n == len(c.src) {
			break
		}
		n += copy(b, c.src[n:])
	}
	return n, nil
}

// Attach makes p a port held in-process: the loop counts the endpoint as
// the port's one client (ErrBusy if it has one) until Close. Attach does
// not open the port for the host (driver.Port.SetGuestOpen): the caller
// does, as the agent does for a socket client.
func (l *Loop) Attach(p *driver.Port) (*Endpoint, error) {
	e := newEndpoint(l, p)
	c := e.c
	if !l.submit(command{kind: cmdAttach, c: c}) {
		return nil, ErrClosed
	}
	// The loop answers at once when it refuses the client; otherwise the
	// answer comes when the client ends, and attached says it is in.
	select {
	case err := <-c.done:
		return nil, err
	case <-c.attached:
	}
	go e.awaitGone()
	return e, nil
}

// newEndpoint is an endpoint for p and its client record, not attached.
func newEndpoint(l *Loop, p *driver.Port) *Endpoint {
	e := &Endpoint{
		loop: l, port: p,
		rsig: make(chan struct{}, 1), wsig: make(chan struct{}, 1), psig: make(chan struct{}, 1),
		rtimer: stoppedTimer(), wtimer: stoppedTimer(),
		closing: make(chan struct{}), gone: make(chan struct{}),
		spin: newSpinner(l.poll),
	}
	e.c = &client{loop: l, port: p, fd: -1, ep: e, done: make(chan error, 1), attached: make(chan struct{})}
	e.c.pc = l.portCounters(p.ID())
	return e
}

func stoppedTimer() *time.Timer {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return t
}

// awaitGone waits for the loop to let go of the client.
func (e *Endpoint) awaitGone() {
	defer guard.Recover()
	e.goneErr = <-e.c.done
	close(e.gone)
}

// Port returns the port the endpoint holds.
func (e *Endpoint) Port() *driver.Port { return e.port }

// Read copies host bytes into b: at least one, waiting for them. While the
// host side is away it waits (nothing is lost). It returns
// driver.ErrPortRemoved once the port went, driver.ErrDeviceReset when host
// bytes were or may have been lost in a reset (the next Read goes on), net.ErrClosed after
// Close, and ErrDeadline once the read deadline passed.
func (e *Endpoint) Read(b []byte) (int, error) {
	e.rmu.Lock()
	defer e.rmu.Unlock()
	if len(b) == 0 {
		return 0, e.closedErr()
	}
	for {
		if err := e.closedErr(); err != nil {
			return 0, err
		}
		e.rwait.Store(true)
		e.dst.dst = b
		n, _, err := e.port.RecvTo(&e.dst)
		e.dst.dst = nil
		if n > 0 || err != nil {
			e.rwait.Store(false)
			e.bytesRead.Add(uint64(n))
			if n > 0 {
				e.spin.reply(nanotime(), false)
			}
			return n, err
		}
		if e.spinRx() {
			continue
		}
		// Never wait with the receive interrupt off.
		if e.quiet {
			e.quiet = false
			if e.port.ArmRx() {
				continue
			}
		}
		if h := testHookReadWait.Load(); h != nil {
			(*h)(e)
		}
		if err := e.wait(e.rsig, &e.rdl, e.rtimer); err != nil {
			e.rwait.Store(false)
			return 0, err
		}
	}
}

// Write copies b into the port's transmit buffers and queues it for the
// host; it returns once all of b is queued (the device takes it from
// there), waiting for free buffers and, while the host side is away, for
// the host. On a deadline or an error it returns how much was queued.
func (e *Endpoint) Write(b []byte) (int, error) {
	e.wmu.Lock()
	defer e.wmu.Unlock()
	total := 0
	for {
		if err := e.closedErr(); err != nil {
			return total, err
		}
		if len(b) == 0 {
			return total, nil
		}
		e.wwait.Store(waitSend)
		e.src.src = b
		n, block, err := e.port.SendFrom(&e.src)
		e.src.src = nil
		total += n
		b = b[n:]
		e.bytesWritten.Add(uint64(n))
		if n > 0 && len(b) == 0 && total < bulkSend {
			// A request: the next Read may spin for its reply.
			e.kickAt.Store(nanotime())
		}
		if err != nil {
			e.wwait.Store(waitNone)
			return total, err
		}
		if n > 0 {
			continue
		}
		if block == driver.SendFull {
			// The loop asks for the transmit interrupt at its next Arm.
			e.loop.wake()
		}
		if err := e.wait(e.wsig, &e.wdl, e.wtimer); err != nil {
			e.wwait.Store(waitNone)
			return total, err
		}
	}
}

// Close lets go of the port: it waits until the device took every byte
// Write queued (or the port went, or the device reset; at most until the
// write deadline, or DrainTimeout without one), then detaches the
// endpoint from the loop; waiting Reads and Writes return net.ErrClosed.
// The caller then closes the port for the host (SetGuestOpen(false), which
// discards and counts host bytes nobody read).
func (e *Endpoint) Close() error {
	e.closeOnce.Do(func() {
		e.wmu.Lock()
		err := e.drain()
		e.wmu.Unlock()
		close(e.closing)
		// A Read that returned with the receive interrupt off leaves it
		// on for whoever holds the port next.
		e.rmu.Lock()
		if e.quiet {
			e.quiet = false
			e.port.ArmRx()
		}
		e.rmu.Unlock()
		// Refused only once the loop is closed, which ends every client.
		e.loop.submit(command{kind: cmdDetach, c: e.c, err: net.ErrClosed})
		<-e.gone
		if errors.Is(err, net.ErrClosed) || errors.Is(err, ErrClosed) {
			err = nil
		}
		e.closeErr = err
	})
	return e.closeErr
}

// DrainTimeout bounds how long Close waits for the device to take what
// Write queued when no write deadline is set (a host that stopped reading
// for good must not hang Close).
const DrainTimeout = 30 * time.Second

// drain waits until the device holds nothing the endpoint queued, until
// the write deadline or at most DrainTimeout.
func (e *Endpoint) drain() error {
	deadline := time.Now().Add(DrainTimeout)
	if d := e.wdl.Load(); d != 0 {
		deadline = time.Unix(0, d)
	}
	e.wtimer.Reset(max(time.Until(deadline), 0))
	defer e.wtimer.Stop()
	for {
		e.wwait.Store(waitDrain)
		done, err := e.port.TxDrained()
		if done || err != nil {
			e.wwait.Store(waitNone)
			if errors.Is(err, driver.ErrPortRemoved) || errors.Is(err, driver.ErrClosed) {
				err = nil // nothing left to wait for
			}
			return err
		}
		// TxDrained asked for the transmit interrupt at the loop's next
		// Arm: have it arm.
		e.loop.wake()
		select {
		case <-e.wsig:
		case <-e.wtimer.C:
			e.wwait.Store(waitNone)
			return fmt.Errorf("pump: close: the device did not take every byte written by %v: %w", deadline.Format(time.RFC3339Nano), ErrDeadline)
		case <-e.gone:
			e.wwait.Store(waitNone)
			return nil
		}
	}
}

// BytesRead and BytesWritten count what Read returned and Write queued.
func (e *Endpoint) BytesRead() uint64    { return e.bytesRead.Load() }
func (e *Endpoint) BytesWritten() uint64 { return e.bytesWritten.Load() }
