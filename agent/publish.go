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

	"golang.org/x/sys/unix"

	"github.com/vserial/vserial/internal/guard"
	"github.com/vserial/vserial/internal/ratelimit"
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
	// Rejected clients and accept errors are the clients' doing: their
	// log lines and events go through these gates.
	rejectGate, acceptLog *ratelimit.Gate

	// Guarded by a.mu.
	gone bool
	// name is the port's name as the agent acts on it: read from the Port
	// once each time the watcher places the socket, so the socket, the
	// configuration and the events of one round agree even while the
	// device names the port meanwhile.
	name    string
	sock    string // socket path, "" when unpublished
	ln      *net.UnixListener
	client  *session
	badName string // last name reported as unusable, so it is logged once
	cfg     PortConfig
	con     *ptyConsole // the console's terminal, nil if none
	// consoleCapped: the port was refused a terminal by the per-device
	// cap (logged once).
	consoleCapped bool
	cfgSet        bool               // cfg holds the configuration in force
	dialStop      context.CancelFunc // ends the connect-mode dialer, nil if none
	// nameProblem says why the socket is not named after the port's name
	// (unusable as a file name, or taken by another port); "" otherwise.
	nameProblem string
	hostSeen    bool // host state last logged (watcher only)

	// What the event stream last said of the port (watcher only, set by
	// AddPort before the watcher starts).
	seenName, seenSock string
	seenCols, seenRows uint16
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
		name:   p.Name(),

		hostSeen: p.HostConnected(),

		rejectGate: ratelimit.New(rejectBurst, rejectRate),
		acceptLog:  ratelimit.New(5, 1),
	}
}

// A port reports rejected clients as log lines and client_rejected events
// in a burst of rejectBurst, then rejectRate a second; each carries the
// running count (rejected_total), so none is lost from the count.
const (
	rejectBurst = 10
	rejectRate  = 1
)

func (pt *port) poke() {
	select {
	case pt.kick <- struct{}{}:
	default:
	}
}

// watch follows the port's Changed notifications: host connects and
// disconnects, a late name, removal.
func (pt *port) watch() {
	defer guard.Recover()
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
				pt.a.publish(pt.event(EventHostConnected))
			} else {
				pt.log.Info("host disconnected")
				pt.a.publish(pt.event(EventHostDisconnected))
			}
		}
		pt.a.placeSocket(pt)
		pt.a.checkConsole(pt)
		pt.watchEvents()
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
	name := pt.name
	pt.nameProblem = ""
	if name == "" {
		return fallback
	}
	if filepath.Join(a.dir, name) == pt.sock {
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
	if o := a.owners[filepath.Join(a.dir, name)]; o != nil && o != pt {
		pt.nameProblem = fmt.Sprintf("name clash: device %d port %d has the socket %s", o.dev, o.p.ID(), name)
		if pt.badName != name {
			pt.badName = name
			pt.log.Warn("another port already has this name; keeping the fallback", "name", name, "owner_dev", o.dev, "owner_port", o.p.ID(), "socket", filepath.Join(a.dir, fallback))
		}
		return fallback
	}
	return name
}

// portConfig returns the configuration pt gets now: the entry for its name
// (the host's name, or the fallback vport name while it has none), or the
// default. a.mu is held.
func (a *Agent) portConfig(pt *port) PortConfig {
	name := pt.name
	if name == "" {
		name = vportName(pt.dev, pt.p.ID())
	}
	if c, ok := a.portCfgs[name]; ok {
		return c
	}
	return a.defCfg
}

// placeSocket gives pt what its configuration asks for now: a socket
// (listen), a dialer (connect) or nothing (ignore). A change of
// configuration (a name arrived that has an entry of its own) retires what
// the old one set up; a client of the old mode is ended.
func (a *Agent) placeSocket(pt *port) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if pt.gone || a.closed {
		return
	}
	pt.name = pt.p.Name()
	cfg := a.portConfig(pt)
	if !pt.cfgSet || !cfg.same(pt.cfg) {
		if pt.cfgSet {
			a.retireLocked(pt, cfg.effectiveMode() != pt.cfg.effectiveMode())
		}
		pt.cfg, pt.cfgSet = cfg, true
		switch m := cfg.effectiveMode(); m {
		case ModeIgnore:
			pt.log.Info("port ignored by configuration: no socket, never opened towards the host", "name", pt.name)
		case ModeConnect:
			pt.log.Info("port in connect mode", "name", pt.name, "target", cfg.Target)
		case ModePTY:
			pt.log.Info("port in pty mode: a pseudo-terminal as well as the socket", "name", pt.name)
		}
	}
	if cfg.Socket != "" || cfg.effectiveMode() == ModeIgnore || cfg.effectiveMode() == ModeConnect {
		pt.nameProblem = "" // the socket is not named after the port
	}
	switch cfg.effectiveMode() {
	case ModeIgnore:
	case ModeConnect:
		if pt.dialStop == nil {
			ctx, cancel := context.WithCancel(pt.ctx)
			pt.dialStop = cancel
			a.wg.Add(1)
			go pt.dial(ctx, cfg.Target)
		}
	default:
		a.placeListenLocked(pt, cfg)
	}
}

// retireLocked undoes what pt's current configuration set up: its socket,
// its dialer and, when the mode changes, its client session. a.mu is held.
func (a *Agent) retireLocked(pt *port, modeChanged bool) {
	if pt.ln != nil {
		a.unpublishLocked(pt)
	}
	if pt.dialStop != nil {
		pt.dialStop()
		pt.dialStop = nil
	}
	if modeChanged && pt.client != nil {
		pt.client.cancel()
	}
}

// socketPath picks the socket path pt should have now under cfg. a.mu is
// held.
func (a *Agent) socketPath(pt *port, cfg PortConfig) string {
	if cfg.Socket == "" {
		return filepath.Join(a.dir, a.socketName(pt))
	}
	want := cfg.Socket
	if !filepath.IsAbs(want) {
		want = filepath.Join(a.dir, want)
	}
	if o := a.owners[want]; o != nil && o != pt {
		fallback := filepath.Join(a.dir, vportName(pt.dev, pt.p.ID()))
		pt.nameProblem = fmt.Sprintf("configured socket %s: device %d port %d has it", want, o.dev, o.p.ID())
		if pt.badName != want {
			pt.badName = want
			pt.log.Warn("configured socket already belongs to another port; keeping the fallback", "socket", want, "owner_dev", o.dev, "owner_port", o.p.ID(), "fallback", fallback)
		}
		return fallback
	}
	return want
}

// placeListenLocked publishes pt at the path it should have, moving it from
// its current socket if the path changed. a.mu is held.
func (a *Agent) placeListenLocked(pt *port, cfg PortConfig) {
	want := a.socketPath(pt, cfg)
	if want == pt.sock {
		return
	}
	if o := a.owners[want]; o != nil {
		// Only a fallback name can get here (socketName checked names):
		// the previous incarnation of this port has not let go yet.
		pt.log.Warn("socket name still held by another port", "socket", want)
		return
	}
	perm := sockPerm{mode: cfg.SocketMode, owner: cfg.Owner, group: cfg.Group}
	if perm.mode == 0 {
		perm.mode = a.sockMode
	}
	ln, err := a.listenAt(want, perm, filepath.Dir(want) != a.dir)
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
	if old == "" {
		pt.log.Info("port published", "socket", want)
	} else {
		pt.log.Info("port named; socket moved", "name", pt.name, "socket", want, "old_socket", old)
	}
	a.wg.Add(1)
	go pt.accept(ln)
}

// dial is the connect mode: it dials target, runs a session on the
// connection, and redials when the dial fails or the connection ends, with
// capped exponential backoff, until ctx ends.
func (pt *port) dial(ctx context.Context, target string) {
	defer guard.Recover()
	a := pt.a
	defer a.wg.Done()
	b := newBackoff(a.redialMin, a.redialMax)
	failing := false
	var d net.Dialer
	for {
		// A session of an earlier mode or connection may still hold the
		// port (bytes waiting for the host): wait for it.
		a.mu.Lock()
		prev := pt.client
		a.mu.Unlock()
		if prev != nil {
			select {
			case <-prev.done:
				continue
			case <-ctx.Done():
				return
			}
		}
		c, err := d.DialContext(ctx, "unix", target)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			wait := b.failed()
			if !failing {
				failing = true
				pt.log.Warn("cannot reach the target; redialing with backoff", "target", target, "err", err, "max_wait", a.redialMax)
			} else {
				pt.log.Debug("redial failed", "target", target, "err", err, "wait", wait)
			}
			if !sleepCtx(ctx, wait) {
				return
			}
			continue
		}
		failing = false
		start := time.Now()
		s := pt.connect(c.(*net.UnixConn))
		if s == nil {
			if !sleepCtx(ctx, b.failed()) {
				return
			}
			continue
		}
		select {
		case <-s.done:
		case <-ctx.Done():
			return
		}
		if !sleepCtx(ctx, b.ended(time.Since(start))) {
			return
		}
	}
}

// sleepCtx waits for d, or returns false when ctx ends first.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// accept takes connections on one listener of pt until it is closed.
func (pt *port) accept(ln *net.UnixListener) {
	defer guard.Recover()
	defer pt.a.wg.Done()
	b := newBackoff(acceptWaitMin, acceptWaitMax)
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: say so, give the
			// system a moment, and carry on.
			if !acceptPause(pt.ctx, b, pt.acceptLog, pt.log.Error, err) {
				return
			}
			continue
		}
		b.reset()
		pt.connect(c)
	}
}

// handoverWait bounds how long a new client waits for the session of a
// client that has already hung up to end.
const handoverWait = 2 * time.Second

// connect starts a session for c, or turns c away if the port has a client
// (then it returns nil). A client that has hung up with nothing unread is
// not in the way: its session is ending, and c gets the port once it has
// (within handoverWait), as an open right after close(2) of Linux's
// /dev/vport works. A client that closed with bytes still waiting for the
// host keeps the port until they are delivered, and c is turned away.
func (pt *port) connect(c *net.UnixConn) *session {
	return pt.connectAfter(c, true)
}

func (pt *port) connectAfter(c *net.UnixConn, mayWait bool) *session {
	a := pt.a
	a.mu.Lock()
	if pt.gone || a.closed {
		a.mu.Unlock()
		c.Close()
		return nil
	}
	if old := pt.client; old != nil && mayWait && old.hungUp() {
		a.mu.Unlock()
		t := time.NewTimer(handoverWait)
		defer t.Stop()
		select {
		case <-old.done:
		case <-t.C:
		case <-pt.ctx.Done():
		}
		return pt.connectAfter(c, false)
	}
	if pt.client != nil {
		n := pt.rejected.Add(1)
		ev := pt.eventLocked(EventClientRejected)
		a.mu.Unlock()
		defer c.Close()
		ok, held := pt.rejectGate.Allow()
		if !ok {
			return nil // counted in rejected_total
		}
		pt.log.Warn("client rejected: the port already has a client", append(peerAttrs(c), "rejected_total", n, "lines_suppressed_before", held)...)
		ev.Rejected = n
		ev.PeerPID, ev.PeerUID = peerCred(c)
		a.publish(ev)
		return nil
	}
	s := newSession(pt, c)
	pt.client = s
	a.wg.Add(1)
	a.mu.Unlock()
	go s.run()
	return s
}

// hungUp reports whether the peer of c has closed its end with nothing left
// unread (or c is already closed).
func hungUp(c *net.UnixConn) bool {
	raw, err := c.SyscallConn()
	if err != nil {
		return true
	}
	hup := false
	err = raw.Control(func(fd uintptr) { hup = peekHup(int(fd)) })
	return hup || err != nil
}

// peekHup reports whether the peer of socket fd has closed its end with
// nothing left unread.
func peekHup(fd int) bool {
	var b [1]byte
	n, _, e := unix.Recvfrom(fd, b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
	return (e == nil && n == 0) || e == unix.ECONNRESET
}
