package vserial

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"sync"

	"github.com/vserial/vserial/agent"
	"github.com/vserial/vserial/driver"
	"github.com/vserial/vserial/internal/agentwire"
	"github.com/vserial/vserial/internal/devopen"
	"github.com/vserial/vserial/internal/guard"
	"github.com/vserial/vserial/pump"
)

// Options say which functions Open takes and how it serves them. The zero
// value takes every free virtio-console function, binds each as `run
// --bind auto` would, serves no sockets, polls adaptively and logs nothing.
type Options struct {
	// Devices are PCI addresses ("0000:00:04.0") of the functions to take,
	// even from a kernel driver that holds them; empty: every
	// virtio-console function no driver holds (or that uio_pci_generic
	// holds, left there by an earlier run).
	Devices []string
	// Bind is "auto" (also ""): vfio-pci for a function in a real IOMMU
	// group, uio_pci_generic otherwise; "uio" or "vfio" to insist.
	Bind string
	// SocketDir, when not "", is where ports nobody dialed in-process are
	// served as Unix sockets (with the control socket), as `vserial-agent
	// run --socket-dir` does. "": no sockets.
	SocketDir string
	// Poll is run's --poll: "adaptive" (also ""), "off", or a fixed spin
	// budget such as "200us" (at most 10ms).
	Poll string
	// Logger receives what the driver, the data plane and the sockets
	// log; nil discards it.
	Logger *slog.Logger
}

// Errors of Open, Dial and a conn's methods. The driver's errors reach a
// conn's Read and Write as they are.
var (
	// ErrClosed is returned by Dial after Close.
	ErrClosed = errors.New("vserial: closed")
	// ErrPortHeld is returned by Dial for a port a conn already holds.
	ErrPortHeld = errors.New("vserial: port already held in-process")
	// ErrPortRemoved is returned by a conn's Read and Write once the host
	// unplugged the port (or its device stopped).
	ErrPortRemoved = driver.ErrPortRemoved
	// ErrDeviceReset is returned once by a conn's Read or Write when bytes
	// were, or may have been, lost in a reset of the device (docs/go-api.md
	// says when); the conn goes on after it.
	ErrDeviceReset = driver.ErrDeviceReset
)

// errTakenOver ends a socket client whose port an in-process Dial took.
var errTakenOver = errors.New("the port was dialed in-process")

// Agent holds the virtio-console functions Open took. Its methods are safe
// for concurrent use.
type Agent struct {
	log  *slog.Logger
	devs []*devopen.Device
	sock *agent.Agent // nil without SocketDir
	ctl  chan error   // the control socket's end (SocketDir only)
	wg   sync.WaitGroup

	mu      sync.Mutex
	closed  bool
	changed chan struct{} // closed and replaced at every port change
	held    map[*driver.Port]*hold
	sockets map[*driver.Port]*sockPort // ports served as sockets
}

// hold is a port taken by Dial: its conn, or nil while Dial sets it up.
type hold struct {
	conn *conn
}

// Open takes the virtio-console functions opts name and brings them up as
// `vserial-agent run` does: each is bound to uio_pci_generic or vfio-pci
// (loading the kernel modules from /lib/modules if needed), reset and
// brought up with MULTIPORT, and served by one data-plane loop. It needs
// root (or CAP_SYS_ADMIN and CAP_SYS_RAWIO). With SocketDir set, ports are
// also served as sockets there until a Dial takes them. ctx bounds the
// bring-up only.
func Open(ctx context.Context, opts Options) (*Agent, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	switch opts.Bind {
	case "", devopen.BindAuto, devopen.BindUIO, devopen.BindVFIO:
	default:
		return nil, fmt.Errorf("vserial: Bind %q: want auto, uio or vfio", opts.Bind)
	}
	poll, err := pump.ParsePoll(opts.Poll)
	if err != nil {
		return nil, fmt.Errorf("vserial: %w", err)
	}
	if poll.Mode != pump.PollOff && runtime.GOMAXPROCS(0) < 2 {
		log.Warn("vserial: GOMAXPROCS is below 2; polling and the data plane's system calls will hand the only P around (set GOMAXPROCS=2)")
	}
	fns, err := devopen.Select(sysfs, opts.Devices, log)
	if err != nil {
		return nil, fmt.Errorf("vserial: %w", err)
	}
	a := &Agent{log: log, changed: make(chan struct{}), held: map[*driver.Port]*hold{}, sockets: map[*driver.Port]*sockPort{}}
	fail := func(err error) (*Agent, error) {
		a.closeDevices()
		return nil, err
	}
	for i, f := range fns {
		d, err := devopen.Open(ctx, devopen.Spec{
			Index:    i,
			Function: f,
			Explicit: len(opts.Devices) > 0,
			Bind:     opts.Bind,
			Poll:     poll,
			Sysfs:    sysfs,
			Logger:   log.With("pci", f.Addr, "dev", i),
		})
		if err != nil {
			return fail(fmt.Errorf("vserial: open %s: %w", f.Addr, err))
		}
		a.devs = append(a.devs, d)
	}
	if err := a.start(opts.SocketDir); err != nil {
		return fail(err)
	}
	return a, nil
}

// start serves sockets in dir (if not "") and follows every device. The
// ports present now are published before start returns, device by device
// in index order, so a name two devices share goes to the lower index (as
// run does); later ones as they come.
func (a *Agent) start(dir string) error {
	if dir != "" {
		if err := a.serveSockets(dir); err != nil {
			return err
		}
	}
	published := make([]map[*driver.Port]bool, len(a.devs))
	for i, d := range a.devs {
		published[i] = map[*driver.Port]bool{}
		for _, p := range d.Dev.Ports() {
			a.publish(i, d, p, published[i])
		}
	}
	for i, d := range a.devs {
		a.wg.Add(1)
		go a.watch(i, d, published[i])
	}
	return nil
}

// sysfs is where Open finds and binds functions.
const sysfs = "/sys"

// serveSockets starts the socket side with its control socket.
func (a *Agent) serveSockets(dir string) error {
	s, err := agent.New(agent.Config{SocketDir: dir, Logger: a.log})
	if err != nil {
		return fmt.Errorf("vserial: sockets: %w", err)
	}
	ln, err := s.ListenControl()
	if err != nil {
		s.Close()
		return fmt.Errorf("vserial: control socket: %w", err)
	}
	a.sock = s
	a.ctl = make(chan error, 1)
	go func() {
		defer guard.Recover()
		a.ctl <- s.ServeControl(ln)
	}()
	return nil
}

// publish serves p, a port of device i, as a socket, once (published
// holds the device's ports already served).
func (a *Agent) publish(i int, d *devopen.Device, p *driver.Port, published map[*driver.Port]bool) {
	if a.sock == nil || published[p] {
		return
	}
	published[p] = true
	sp := &sockPort{Port: p, a: a, loop: d.Loop}
	a.mu.Lock()
	a.sockets[p] = sp
	a.mu.Unlock()
	if err := a.sock.AddPort(i, sp); err != nil && !errors.Is(err, agent.ErrClosed) {
		a.log.Error("vserial: cannot publish port", "dev", i, "port", p.ID(), "err", err)
	}
}

// watch follows device i's events: it wakes waiting Dials at every port
// change and publishes new ports as sockets.
func (a *Agent) watch(i int, d *devopen.Device, published map[*driver.Port]bool) {
	defer guard.Recover()
	defer a.wg.Done()
	for ev := range d.Dev.Events() {
		switch ev.Kind {
		case driver.PortAdded:
			a.publish(i, d, ev.Port, published)
		case driver.DeviceReset, driver.ProtocolViolation, driver.DeviceLimited:
			a.reportDevice(i, ev)
		case driver.PortRemoved:
			delete(published, ev.Port)
			a.mu.Lock()
			delete(a.sockets, ev.Port)
			a.mu.Unlock()
		}
		a.bump()
	}
	if err := d.Dev.Err(); err != nil && !errors.Is(err, driver.ErrClosed) {
		a.log.Error("vserial: device stopped", "dev", i, "err", err)
	}
	a.bump()
}

// reportDevice puts a reset, a protocol violation or a limit reached on
// the sockets' event stream.
func (a *Agent) reportDevice(i int, ev driver.PortEvent) {
	if a.sock == nil {
		return
	}
	out := agentwire.DeviceEvent(i, ev)
	if err := a.sock.ReportDevice(out); err != nil && !errors.Is(err, agent.ErrClosed) {
		a.log.Warn("vserial: device event not reported", "dev", i, "err", err)
	}
}

// bump wakes every Dial waiting for a port.
func (a *Agent) bump() {
	a.mu.Lock()
	close(a.changed)
	a.changed = make(chan struct{})
	a.mu.Unlock()
}

// Dial returns the port named name held in-process: name is the name the
// host gave the port (QEMU's virtserialport name=), or vport<D>p<ID> (D the
// device's index in the order Open took them, ID the port number). It
// waits until such a port exists or ctx ends. A name two devices share
// goes to the lower device index.
//
// The conn is then the port's one client, with the semantics of a socket
// client of `vserial-agent run`: Dial tells the host the port is open
// (PORT_OPEN 1) and Close that it closed (PORT_OPEN 0); while the host side
// is away Write waits (nothing is lost) and Read waits; host bytes that
// arrive for a closed conn are discarded and counted. Deadlines work
// (os.ErrDeadlineExceeded). A second Dial of a held port fails with
// ErrPortHeld. Dial of a port served as a socket takes it over: its
// socket client, if any, is disconnected (the reason is logged) and the
// socket refuses clients until the conn is closed.
func (a *Agent) Dial(ctx context.Context, name string) (net.Conn, error) {
	if name == "" {
		return nil, errors.New("vserial: Dial: empty port name")
	}
	for {
		a.mu.Lock()
		if a.closed {
			a.mu.Unlock()
			return nil, ErrClosed
		}
		changed := a.changed
		a.mu.Unlock()
		if d, p := a.find(name); p != nil {
			return a.take(ctx, d, p, name)
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, fmt.Errorf("vserial: Dial %s: no such port yet: %w", name, ctx.Err())
		}
	}
}

// find returns the live port called name and its device.
func (a *Agent) find(name string) (*devopen.Device, *driver.Port) {
	for _, d := range a.devs {
		for _, p := range d.Dev.Ports() {
			if p.Name() == name || p.KernelName() == name {
				return d, p
			}
		}
	}
	return nil, nil
}

// take holds p for a new conn.
func (a *Agent) take(ctx context.Context, d *devopen.Device, p *driver.Port, name string) (_ net.Conn, err error) {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil, ErrClosed
	}
	if a.held[p] != nil {
		a.mu.Unlock()
		return nil, fmt.Errorf("vserial: Dial %s: %w", name, ErrPortHeld)
	}
	h := &hold{}
	a.held[p] = h
	a.mu.Unlock()
	defer func() {
		if err != nil {
			a.release(p)
		}
	}()
	// A socket client the loop serves on the port ends first.
	if sp := a.socketPortOf(p); sp != nil {
		sp.takeOver()
	}
	if err := p.SetGuestOpen(ctx, true); err != nil {
		return nil, fmt.Errorf("vserial: Dial %s: open the port: %w", name, err)
	}
	e, err := d.Loop.Attach(p)
	if err != nil {
		p.SetGuestOpen(context.WithoutCancel(ctx), false)
		return nil, fmt.Errorf("vserial: Dial %s: %w", name, err)
	}
	c := &conn{a: a, ep: e, port: p, addr: Addr(name)}
	a.mu.Lock()
	h.conn = c
	closed := a.closed
	a.mu.Unlock()
	if closed {
		// Close ran meanwhile and did not see this conn.
		c.Close()
		return nil, ErrClosed
	}
	a.log.Info("vserial: port held in-process", "port", name)
	return c, nil
}

// release lets go of p's hold.
func (a *Agent) release(p *driver.Port) {
	a.mu.Lock()
	delete(a.held, p)
	a.mu.Unlock()
}

// socketPortOf returns p as the socket side serves it, or nil.
func (a *Agent) socketPortOf(p *driver.Port) *sockPort {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.sockets[p]
}

// isHeld reports whether a conn holds p (or a Dial is taking it).
func (a *Agent) isHeld(p *driver.Port) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.held[p] != nil
}

// Close closes every conn, tells the host the ports closed, resets the
// devices and gives the functions back to the drivers they had. It is
// idempotent.
func (a *Agent) Close() error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil
	}
	a.closed = true
	close(a.changed) // waiting Dials return ErrClosed
	a.changed = make(chan struct{})
	var conns []*conn
	for _, h := range a.held {
		if h.conn != nil {
			conns = append(conns, h.conn)
		}
	}
	a.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
	if a.sock != nil {
		a.sock.Close()
		if err := <-a.ctl; err != nil && !errors.Is(err, agent.ErrClosed) {
			a.log.Warn("vserial: control socket", "err", err)
		}
	}
	err := a.closeDevices()
	a.wg.Wait()
	return err
}

// closeDevices closes every device Open brought up.
func (a *Agent) closeDevices() error {
	var first error
	for _, d := range a.devs {
		if err := d.Close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}
