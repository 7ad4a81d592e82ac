package portnode

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vserial/vserial/cuse"
	"github.com/vserial/vserial/driver"
	"github.com/vserial/vserial/pump"
)

// ErrHeldByNode is what a socket client's open of the port meets while a
// program holds the port through its device node.
var ErrHeldByNode = errors.New("the port is held through its device node")

// Who holds a Port.
const (
	heldNone = iota
	heldSocket
	heldNode
)

// handoverWait bounds how long an open of the node waits for the release
// of the previous opener to finish (its bytes taken by the device), as a
// socket client waits for the session of one that hung up.
const handoverWait = 2 * time.Second

// openTimeout bounds PORT_OPEN at an open or release.
const openTimeout = 5 * time.Second

// Port is one port shared by its socket side and its device node: whoever
// opens first holds it. The socket side goes through SetGuestOpen; the
// node through the CUSE handler (file.go).
type Port struct {
	p    *driver.Port
	loop *pump.Loop
	log  *slog.Logger

	mu        sync.Mutex
	held      int
	f         *file         // the node's open file while held == heldNode
	releasing chan struct{} // closed when the last release is done; nil if none
	nextFH    uint64
	gone      bool // the port was removed: the node answers as Linux's unplugged port
	// stopping: the agent is stopping; the node answers as Linux's
	// unplugged port (ENODEV, POLLHUP) so that its holder lets go.
	stopping atomic.Bool
	srv      *cuse.Server
}

// NewPort makes p shareable between its socket and a node served through
// loop.
func NewPort(p *driver.Port, loop *pump.Loop, log *slog.Logger) *Port {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Port{p: p, loop: loop, log: log.With("port", p.ID())}
}

// Driver is the driver's port.
func (pt *Port) Driver() *driver.Port { return pt.p }

// SetGuestOpen is the socket side's open and close of the port (see
// agent.Port): refused with ErrHeldByNode while the node holds it.
func (pt *Port) SetGuestOpen(ctx context.Context, open bool) error {
	if open {
		pt.mu.Lock()
		if pt.held == heldNode {
			pt.mu.Unlock()
			return ErrHeldByNode
		}
		pt.held = heldSocket
		pt.mu.Unlock()
		err := pt.p.SetGuestOpen(ctx, true)
		if err != nil {
			pt.releaseSocket()
		}
		return err
	}
	pt.mu.Lock()
	mine := pt.held == heldSocket
	pt.mu.Unlock()
	if !mine {
		return nil
	}
	err := pt.p.SetGuestOpen(ctx, false)
	pt.releaseSocket()
	return err
}

func (pt *Port) releaseSocket() {
	pt.mu.Lock()
	if pt.held == heldSocket {
		pt.held = heldNone
	}
	pt.mu.Unlock()
}

// HeldByNode reports whether a program holds the port through its node.
func (pt *Port) HeldByNode() bool {
	pt.mu.Lock()
	defer pt.mu.Unlock()
	return pt.held == heldNode
}

// forceRelease lets go of the node's open file when the kernel will send
// no release for it (the CUSE device was closed under it).
func (pt *Port) forceRelease() {
	pt.mu.Lock()
	f := pt.f
	pt.mu.Unlock()
	if f != nil {
		pt.Release(cuse.Request{FH: f.fh})
	}
	pt.awaitClose(context.Background())
}

// awaitClose waits until the node has no open file and no release in
// progress, or ctx ends.
func (pt *Port) awaitClose(ctx context.Context) {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		pt.mu.Lock()
		idle := pt.f == nil && pt.releasing == nil
		pt.mu.Unlock()
		if idle {
			return
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
	}
}

// unplugged reports whether the node answers as Linux's unplugged port:
// the port was removed, or the agent is stopping (Device.Close).
func (pt *Port) unplugged() bool { return pt.stopping.Load() || pt.p.Removed() }

// stop makes the node answer as an unplugged port from now on and wakes
// its open file's waiting read, write and poll, so that its holder hears
// of it as it would of an unplug. It reports whether a file is open.
func (pt *Port) stop() bool {
	pt.stopping.Store(true)
	pt.mu.Lock()
	f := pt.f
	open := f != nil || pt.releasing != nil
	pt.mu.Unlock()
	if f != nil {
		f.ep.SetReadDeadline(past)
		f.ep.SetWriteDeadline(past)
		f.notify()
	}
	return open
}
