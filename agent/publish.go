package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"sync/atomic"
	"time"
)

// port is the agent's state for one published Port.
type port struct {
	a      *Agent
	dev    int
	p      Port
	log    *slog.Logger
	ctx    context.Context // ends when the port is dropped or the agent closes
	cancel context.CancelFunc
	kick   chan struct{} // asks the watcher to look at the name again

	rejected atomic.Uint64

	// Guarded by a.mu.
	gone    bool
	sock    string // socket file name in a.dir, "" when unpublished
	ln      *net.UnixListener
	client  *session
	badName string // last name reported as unusable, so it is logged once
	// nameProblem says why the socket is not named after the port's name
	// (unusable as a file name, or taken by another port); "" otherwise.
	nameProblem string
	hostSeen    bool // host state last logged (watcher only)
}

func newPort(a *Agent, dev int, p Port) *port {
	ctx, cancel := context.WithCancel(a.ctx)
	return &port{
		a:      a,
		dev:    dev,
		p:      p,
		log:    a.log.With("dev", dev, "port", p.ID()),
		ctx:    ctx,
		cancel: cancel,
		kick:   make(chan struct{}, 1),

		hostSeen: p.HostConnected(),
	}
}

func (pt *port) poke() {
	select {
	case pt.kick <- struct{}{}:
	default:
	}
}

// watch follows the port's Changed notifications: host connects and
// disconnects, a late name, removal.
func (pt *port) watch() {
	defer pt.a.wg.Done()
	for {
		ch := pt.p.Changed()
		if pt.p.Removed() {
			pt.a.mu.Lock()
			pt.a.dropLocked(pt, "removed by the device")
			pt.a.mu.Unlock()
			return
		}
		if h := pt.p.HostConnected(); h != pt.hostSeen {
			pt.hostSeen = h
			if h {
				pt.log.Info("host connected")
			} else {
				pt.log.Info("host disconnected")
			}
		}
		pt.a.placeSocket(pt)
		select {
		case <-ch:
		case <-pt.kick:
		case <-pt.ctx.Done():
			return
		}
	}
}

// socketName picks the socket name pt should have now. a.mu is held.
func (a *Agent) socketName(pt *port) string {
	fallback := vportName(pt.dev, pt.p.ID())
	name := pt.p.Name()
	pt.nameProblem = ""
	if name == "" {
		return fallback
	}
	if name == pt.sock {
		return name
	}
	if err := a.checkName(name); err != nil {
		pt.nameProblem = "unusable as a socket name: " + err.Error()
		if pt.badName != name {
			pt.badName = name
			pt.log.Warn("port name unusable as a socket name; keeping the fallback", "name", name, "reason", err.Error(), "socket", filepath.Join(a.dir, fallback))
		}
		return fallback
	}
	if o := a.owners[name]; o != nil && o != pt {
		pt.nameProblem = fmt.Sprintf("name clash: device %d port %d has the socket %s", o.dev, o.p.ID(), name)
		if pt.badName != name {
			pt.badName = name
			pt.log.Warn("another port already has this name; keeping the fallback", "name", name, "owner_dev", o.dev, "owner_port", o.p.ID(), "socket", filepath.Join(a.dir, fallback))
		}
		return fallback
	}
	return name
}

// placeSocket publishes pt under the name it should have, moving it from its
// current socket if the name changed.
func (a *Agent) placeSocket(pt *port) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if pt.gone || a.closed {
		return
	}
	want := a.socketName(pt)
	if want == pt.sock {
		return
	}
	if o := a.owners[want]; o != nil {
		// Only a fallback name can get here (socketName checked names):
		// the previous incarnation of this port has not let go yet.
		pt.log.Warn("socket name still held by another port", "socket", filepath.Join(a.dir, want))
		return
	}
	ln, err := a.listen(want)
	if err != nil {
		pt.log.Error("cannot create port socket", "err", err)
		return
	}
	old := pt.sock
	if pt.ln != nil {
		a.unpublishLocked(pt)
	}
	pt.sock, pt.ln = want, ln
	a.owners[want] = pt
	path := filepath.Join(a.dir, want)
	if old == "" {
		pt.log.Info("port published", "socket", path)
	} else {
		pt.log.Info("port named; socket moved", "name", want, "socket", path, "old_socket", filepath.Join(a.dir, old))
	}
	a.wg.Add(1)
	go pt.accept(ln)
}

// accept takes connections on one listener of pt until it is closed.
func (pt *port) accept(ln *net.UnixListener) {
	defer pt.a.wg.Done()
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: say so, give the
			// system a moment, and carry on.
			pt.log.Error("accept failed", "err", err)
			select {
			case <-time.After(100 * time.Millisecond):
			case <-pt.ctx.Done():
				return
			}
			continue
		}
		pt.connect(c)
	}
}

// connect starts a session for c, or turns c away if the port has a client.
func (pt *port) connect(c *net.UnixConn) {
	a := pt.a
	a.mu.Lock()
	if pt.gone || a.closed {
		a.mu.Unlock()
		c.Close()
		return
	}
	if pt.client != nil {
		n := pt.rejected.Add(1)
		a.mu.Unlock()
		defer c.Close()
		pt.log.Warn("client rejected: the port already has a client", append(peerAttrs(c), "rejected_total", n)...)
		return
	}
	s := newSession(pt, c)
	pt.client = s
	a.wg.Add(1)
	a.mu.Unlock()
	go s.run()
}
