package supervisor

import (
	"context"
	"errors"
	"log/slog"
	"sync"

	"github.com/vserial/vserial/agent"
	"github.com/vserial/vserial/driver"
	"github.com/vserial/vserial/internal/agentwire"
	"github.com/vserial/vserial/internal/portnode"
	"github.com/vserial/vserial/pump"
)

// errTakenOver ends a socket client whose port an in-process Dial took.
var errTakenOver = errors.New("the port was dialed in-process")

// sockPort is a port of a consoleDevice: as the socket side (package
// agent) serves it, its clients are served by the device's loop; as Dial
// takes it, it is held. While it is held, the socket's clients are refused
// at once (the agent logs why), and the socket side's opening and closing
// of the port are left to the conn.
type sockPort struct {
	*driver.Port
	loop *pump.Loop
	log  *slog.Logger
	// node, when not nil, is the port's device node (run --nodes): the
	// port's opens and closes go through it, so that whoever opens first
	// (socket client, node opener or Dial) holds the port.
	node *portnode.Port

	mu     sync.Mutex
	held   bool                    // a Dial holds the port (or is taking it)
	cancel context.CancelCauseFunc // the socket client being served, or nil
	done   chan struct{}           // closed when its ServeFD returned
}

// hold marks the port held; false if it already was.
func (p *sockPort) hold() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.held {
		return false
	}
	p.held = true
	return true
}

// release lets go of the hold: the socket takes clients again.
func (p *sockPort) release() {
	p.mu.Lock()
	p.held = false
	p.mu.Unlock()
}

func (p *sockPort) isHeld() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.held
}

// SetGuestOpen opens or closes the port for a socket client, unless a conn
// holds it.
func (p *sockPort) SetGuestOpen(ctx context.Context, open bool) error {
	if p.isHeld() {
		if open {
			return errTakenOver
		}
		return nil
	}
	return p.guestOpen(ctx, open)
}

// guestOpen opens or closes the port, through its device node if it has
// one (refused with portnode.ErrHeldByNode while a program holds the node).
func (p *sockPort) guestOpen(ctx context.Context, open bool) error {
	if p.node != nil {
		return p.node.SetGuestOpen(ctx, open)
	}
	return p.Port.SetGuestOpen(ctx, open)
}

// ServeFD serves a socket client through the loop until it is done or a
// Dial takes the port over.
func (p *sockPort) ServeFD(ctx context.Context, fd int) error {
	p.mu.Lock()
	if p.held {
		p.mu.Unlock()
		return errTakenOver
	}
	ctx, cancel := context.WithCancelCause(ctx)
	done := make(chan struct{})
	p.cancel, p.done = cancel, done
	p.mu.Unlock()
	err := p.loop.Serve(ctx, p.Port, fd)
	p.mu.Lock()
	p.cancel, p.done = nil, nil
	p.mu.Unlock()
	close(done)
	if cause := context.Cause(ctx); cause == errTakenOver {
		err = cause
	}
	cancel(nil)
	return err
}

// takeOver ends the socket client being served, if any, and waits until
// the loop let go of it. The port must already be held.
func (p *sockPort) takeOver() {
	p.mu.Lock()
	cancel, done := p.cancel, p.done
	p.mu.Unlock()
	if cancel == nil {
		return
	}
	p.log.Info("vserial: socket client disconnected: the port was dialed in-process", "port", p.ID(), "name", p.Name())
	cancel(errTakenOver)
	<-done
}

// Stats are the port's counters with the loop's (the device's under
// "loop_").
func (p *sockPort) Stats() agent.PortStats { return agentwire.Stats(p.Port, p.loop) }

var (
	_ agent.Port     = (*sockPort)(nil)
	_ agent.FDServer = (*sockPort)(nil)
)
