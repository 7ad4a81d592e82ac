package pump

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/vserial/vserial/driver"
	"github.com/vserial/vserial/internal/guard"
	"github.com/vserial/vserial/internal/rawio"
)

var (
	// ErrClosed is returned by Serve once the loop is closed.
	ErrClosed = errors.New("pump: loop closed")
	// ErrBusy is returned by Serve for a port that already has a client
	// in the loop.
	ErrBusy = errors.New("pump: port already has a client")
)

// Options configure a Loop.
type Options struct {
	Poll   Poll
	Logger *slog.Logger // nil: discard
	wait   waitMode     // tests choose; the default follows GOMAXPROCS
}

// Epoll tags (EpollEvent.Fd; Pad carries the index or client id).
const (
	tagIRQ    = 1
	tagCmd    = 2
	tagClient = 3
)

type cmdKind uint8

const (
	cmdAttach cmdKind = iota + 1
	cmdDetach
	cmdStop
)

type command struct {
	kind cmdKind
	c    *client
	err  error // detach: what Serve returns
}

// Loop is the data plane of one device: one goroutine that owns its rings
// (through the driver's poll face) and every attached client descriptor.
type Loop struct {
	dev  *driver.Device
	log  *slog.Logger
	poll Poll

	ep, cmdFD int
	irqFDs    []int
	// fdMu keeps cmdFD open while a wake writes to it: wakes come from
	// other goroutines (the driver, endpoints, submit) and may race with
	// Close.
	fdMu sync.RWMutex

	mu     sync.Mutex // guards cmds, closed and ports
	cmds   []command
	closed bool
	ports  map[uint32]*portCounters
	done   chan struct{}

	// Owned by the loop goroutine.
	clients map[int32]*client
	active  []*client
	byPort  map[uint32]*client
	nextID  int32
	evs     []unix.EpollEvent
	spinOn  *client // the client whose small send the next spin follows
	pending []command

	stats     loopCounters
	storm     stormState
	waitState // how it sleeps (wait.go)
	// SCHED_BATCH while streaming (batch.go); the goroutine is locked to
	// its thread while the thread's policy is not the default.
	batch, batchBroken  bool
	locked, policyStuck bool
	rtBroken            bool // SCHED_FIFO refused: bulk calls run as they are
	noBatch             bool
	// nice is the thread's nice value when the loop started, kept in
	// every policy change (sched_setattr sets it too).
	nice int32
	// Client polling on more than one vCPU (clientpoll.go).
	cpoll    spinner
	cpollDue bool
	// Receive streams moved in batches (rxbatch.go).
	rxStreams int  // clients in rxStream mode
	rxFlush   bool // deliver what is buffered, batch or not
	rawIdle   bool // the last raw wait timed out: sleep without a deadline
	endpoints int  // in-process clients attached (inproc.go)
	inRT      bool // the loop's thread is SCHED_FIFO for a pass (batch.go)
	small     int  // small transfers in a row while batched
}

// New starts the loop of dev, which must have been opened with
// driver.Config.ExternalLoop: the loop takes the interrupt descriptors
// (Device.IRQFDs) into its epoll set and services the device from then on.
func New(dev *driver.Device, opts Options) (*Loop, error) {
	l, err := newLoop(dev, opts)
	if err != nil {
		return nil, err
	}
	go l.run()
	return l, nil
}

// newLoop is New without starting the goroutine (tests drive it by hand).
func newLoop(dev *driver.Device, opts Options) (_ *Loop, err error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	l := &Loop{
		dev: dev, log: log, poll: opts.Poll,
		ep: -1, cmdFD: -1,
		ports:   map[uint32]*portCounters{},
		done:    make(chan struct{}),
		clients: map[int32]*client{},
		byPort:  map[uint32]*client{},
		evs:     make([]unix.EpollEvent, 64),
		cpoll:   newSpinner(opts.Poll),
		// Idle until a client or the device says otherwise (wait.go).
		rawIdle: true,
	}
	defer func() {
		if err != nil {
			l.closeFDs()
		}
	}()
	if l.ep, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		return nil, fmt.Errorf("pump: epoll_create1: %w", err)
	}
	if err := l.chooseWait(opts.wait); err != nil {
		return nil, err
	}
	if l.cmdFD, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		return nil, fmt.Errorf("pump: eventfd: %w", err)
	}
	if err := l.watch(l.cmdFD, unix.EPOLLIN|unix.EPOLLET, tagCmd, 0); err != nil {
		return nil, err
	}
	if l.irqFDs, err = dev.IRQFDs(); err != nil {
		return nil, err
	}
	for i, fd := range l.irqFDs {
		if err := l.watch(fd, unix.EPOLLIN|unix.EPOLLET, tagIRQ, int32(i)); err != nil {
			return nil, err
		}
	}
	dev.SetWaker(l.wake)
	return l, nil
}

func (l *Loop) watch(fd int, events uint32, tag, pad int32) error {
	ev := unix.EpollEvent{Events: events, Fd: tag, Pad: pad}
	if err := unix.EpollCtl(l.ep, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return fmt.Errorf("pump: epoll add: %w", err)
	}
	return nil
}

func (l *Loop) closeFDs() {
	if l.epFile != nil {
		l.epFile.Close() // it owns ep
		l.epFile, l.epConn = nil, nil
	} else if l.ep >= 0 {
		unix.Close(l.ep)
	}
	l.ep = -1
	l.fdMu.Lock()
	if l.cmdFD >= 0 {
		unix.Close(l.cmdFD)
		l.cmdFD = -1
	}
	l.fdMu.Unlock()
}

// wake makes the loop look at everything again (the driver calls it on port
// changes; commands use it too). It never blocks.
func (l *Loop) wake() {
	l.stats.wakes.Add(1)
	l.fdMu.RLock()
	if l.cmdFD >= 0 {
		rawio.EventfdAdd(l.cmdFD)
	}
	l.fdMu.RUnlock()
}

// submit queues a command for the loop; false once the loop is closed.
func (l *Loop) submit(c command) bool {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return false
	}
	l.cmds = append(l.cmds, c)
	l.mu.Unlock()
	l.wake()
	return true
}

// Serve moves bytes between port p and the stream descriptor fd (a
// non-blocking socket or terminal) until the client is done, then returns:
// io.EOF once the client closed its end and the device took every byte it
// sent; the read or write error that ended it; driver.ErrPortRemoved,
// driver.ErrDeviceReset (bytes the client sent were lost in a device
// reset, or host bytes may have been: see docs/sockets.md), ErrClosed; or ctx.Err() when ctx ends first. Bytes from the
// client are read only while the host side is connected; a client that
// hangs up with nothing unread ends even while the host is away. fd stays
// the caller's: the loop stops watching it before Serve returns.
func (l *Loop) Serve(ctx context.Context, p *driver.Port, fd int) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c := &client{loop: l, port: p, fd: fd, done: make(chan error, 1), readable: true, writable: true, spin: newSpinner(l.poll)}
	c.pc = l.portCounters(p.ID())
	// A bigger send buffer lets one writev hand over every received buffer
	// (the default, wmem_default, is about 208 KiB); needs CAP_NET_ADMIN,
	// best effort.
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 1<<20)
	if !l.submit(command{kind: cmdAttach, c: c}) {
		return ErrClosed
	}
	select {
	case err := <-c.done:
		return err
	case <-ctx.Done():
		if l.submit(command{kind: cmdDetach, c: c, err: ctx.Err()}) {
			return <-c.done
		}
		// Closed meanwhile: the loop ended every client on its way out.
		return <-c.done
	}
}

// Close stops the loop: every client's Serve returns ErrClosed. The device
// stays open (the caller closes it after).
func (l *Loop) Close() error {
	if l.submit(command{kind: cmdStop}) {
		l.mu.Lock()
		l.closed = true
		l.mu.Unlock()
	}
	<-l.done
	l.dev.SetWaker(nil)
	l.mu.Lock()
	l.closeFDs()
	l.mu.Unlock()
	return nil
}

func (l *Loop) portCounters(id uint32) *portCounters {
	l.mu.Lock()
	defer l.mu.Unlock()
	pc := l.ports[id]
	if pc == nil {
		pc = &portCounters{}
		l.ports[id] = pc
	}
	return pc
}

// run is the loop: work until a pass makes no progress, spin if a reply is
// due soon, arm the interrupts, and only then sleep in epoll_wait.
func (l *Loop) run() {
	defer guard.Recover()
	defer close(l.done)
	// The thread's scheduling policy follows the traffic (batch.go). A
	// parking loop is locked to its thread only while that policy is not
	// the default (holdThread), a pinned one always (wait.go); a goroutine
	// that ends locked takes its thread with it.
	if !l.parking {
		l.holdThread()
	}
	// The process's priority (run --nice) is the loop's in every policy.
	if raw, err := unix.Getpriority(unix.PRIO_PROCESS, 0); err == nil {
		l.nice = int32(20 - raw) // the system call's 20 - nice
	}
	defer func() {
		if l.batch {
			l.setPolicy(false)
		}
	}()
	// Whatever the device signalled before the loop watched: handled as
	// if every descriptor had fired.
	l.dev.HandleIRQ(^uint64(0))
	for {
		polled := 0
		for {
			if l.pass() {
				continue
			}
			if l.spin() {
				continue
			}
			if h := testHookBeforeArm.Load(); h != nil {
				(*h)()
			}
			if l.dev.Arm(!l.storm.muted) && !testIgnoreArm.Load() {
				l.stats.armPending.Add(1)
				continue
			}
			// On more than one vCPU the client's next request may come
			// while this one is still awake: look for it without sleeping.
			if n := l.pollClients(); n > 0 {
				polled = n
				break
			}
			break
		}
		n := polled
		if n == 0 {
			l.stats.sleeps.Add(1)
			var err error
			n, err = l.wait()
			l.stats.epollWaits.Add(1)
			if n == 0 && err == nil && l.rxStreams > 0 {
				// Woken by the clock: the tail of a stream is due.
				l.rxFlush = true
			}
			if err != nil {
				if err == unix.EINTR {
					continue
				}
				l.log.Error("pump: epoll_wait failed; the data plane stops", "err", err)
				l.stopAll(fmt.Errorf("pump: epoll_wait: %w", err))
				return
			}
		}
		if l.events(n) {
			l.stopAll(ErrClosed)
			return
		}
	}
}

// events handles what epoll_wait returned in l.evs[:n]; it reports a stop.
func (l *Loop) events(n int) (stop bool) {
	l.dev.Disarm()
	var fired uint64
	for _, ev := range l.evs[:n] {
		switch ev.Fd {
		case tagIRQ:
			if ev.Events&(unix.EPOLLERR|unix.EPOLLHUP) != 0 {
				l.irqFailed(int(ev.Pad))
				continue
			}
			fired |= 1 << min(ev.Pad, 63)
			l.rawIdle = false // traffic moves: wait raw (wait.go)
		case tagCmd:
			stop = l.commands() || stop
		case tagClient:
			if c := l.clients[ev.Pad]; c != nil {
				l.rawIdle = false
				l.stats.clientEvents.Add(1)
				c.events(ev.Events)
				// A request that came while the loop slept still teaches
				// the client poll how soon requests follow replies (an
				// EPOLLOUT edge alone is room in a full client, not a
				// request).
				if !spaceEdge(ev.Events) {
					l.cpoll.reply(nanotime(), false)
				}
			}
		}
	}
	if stop {
		return true
	}
	if l.storm.muted && nanotime() >= l.storm.until {
		l.unmute()
		fired = ^uint64(0)
	}
	if fired != 0 {
		l.stats.irqWakes.Add(1)
		l.irq(l.dev.HandleIRQ(fired))
	}
	return false
}

// irqFailed handles an interrupt descriptor that reports an error: the
// function went away under the agent (uio_pci_generic unbound: /dev/uioN
// then fails every read). The device is failed, which removes its ports and
// ends their clients; the descriptors are no longer watched.
func (l *Loop) irqFailed(i int) {
	var b [8]byte
	_, err := unix.Read(l.irqFDs[i], b[:])
	if err == nil || err == unix.EAGAIN {
		err = fmt.Errorf("descriptor %d reports an error", i)
	}
	l.log.Error("pump: the interrupt failed; the device stops", "err", err)
	for _, fd := range l.irqFDs {
		unix.EpollCtl(l.ep, unix.EPOLL_CTL_DEL, fd, nil)
	}
	l.dev.Fail(err)
}
