package supervisor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/vserial/vserial/agent"
	"github.com/vserial/vserial/driver"
	"github.com/vserial/vserial/internal/devopen"
	"github.com/vserial/vserial/internal/guard"
	"github.com/vserial/vserial/internal/hotplug"
	"github.com/vserial/vserial/pciscan"
	"github.com/vserial/vserial/pump"
)

// Config is what to open and how to serve it, checked (package vserial
// turns its Options into one).
type Config struct {
	Devices       []string // PCI addresses; empty: every free console
	Bind          string   // devopen.BindUIO, BindVFIO or BindAuto ("": auto)
	MaxPorts      int      // 0: as many as the device offers
	DMABudget     int      // 0: the driver's default
	Ring          driver.RingLayout
	Poll          pump.Poll
	ShutdownFlush time.Duration // driver.Config.CloseFlush (negative: no wait)
	Sysfs         string        // "": /sys
	// WaitDevices: start with no function at all, adopt each that appears
	// and let go of each that goes (kernel uevents); the supervisor then
	// never stops on its own.
	WaitDevices bool
	// Nodes, when not nil, says which ports (by the name their socket
	// configuration is looked up by) also get a character device node
	// through CUSE (docs/nodes.md); nil: none.
	Nodes func(name string) bool
	// Sockets, when not nil, is the socket side's configuration: every
	// port nobody holds in-process is served as a socket, with the control
	// socket. Its Logger is filled in from Logger.
	Sockets *agent.Config
	// Program prefixes the lines written to the host through each device's
	// emergency channel ("PROGRAM: starting on ...").
	Program string
	Logger  *slog.Logger
}

// Hooks are what a program may change besides Config, without it being
// part of package vserial's API: cmd's tests open fake devices, run learns
// of each device for its last gasp and fault injection. Open finds them
// in its context (WithHooks).
type Hooks struct {
	Open Opener // nil: OpenDevice
	// Opened, when not nil, is called with each device once it is open,
	// before its ports are published (also for functions adopted later).
	Opened func(index int, addr string, d Device)
	// Started, when not nil, is called by Open once the ports present at
	// start are published: how many devices and ports.
	Started   func(devices, ports int)
	MaxResets int                             // Spec.MaxResets of every device
	Uevents   func() (hotplug.Uevents, error) // nil: pciscan.Watch
}

type hooksKey struct{}

// WithHooks returns ctx carrying h for Open.
func WithHooks(ctx context.Context, h Hooks) context.Context {
	return context.WithValue(ctx, hooksKey{}, h)
}

// Supervisor drives the functions Open took. Its steps, in order: open
// the functions found at start (openStart), publish their ports
// (publishStart), feed the ports each device announces later (feed),
// adopt and let go of whole functions as they come and go (hotplug.go),
// answer devices that stop (serve), and shut down (Close).
type Supervisor struct {
	cfg    Config
	hooks  Hooks
	log    *slog.Logger
	ctx    context.Context // ends at Close
	cancel context.CancelFunc
	a      *agent.Agent // nil without Config.Sockets
	served chan error   // the control socket's server result

	mu      sync.Mutex
	devs    []*managed          // by device index, never reused; nil while opening
	held    map[string]*managed // functions driven now, by address
	gaveUp  map[string]bool     // functions not to adopt again until removed
	running int                 // devices fed whose Ports are still open
	closing bool                // shutdown closes every device: their ends are expected
	closed  bool                // Close was called
	stopped chan *managed       // a device's Ports closed
	changed chan struct{}       // closed and replaced at every port change (Take)
	helds   map[*Held]bool

	done      chan struct{} // closed when serving stopped on its own
	err       error         // why (Err)
	serveDone chan struct{} // serve returned (nil: never started)
	hpDone    chan struct{} // the hot-plug watcher returned (nil: none)
	closeOnce sync.Once
	closeErr  error
}

// managed is one device the supervisor opened.
type managed struct {
	index int
	addr  string
	dev   Device // nil while it is being opened
	start map[agent.Port]bool
	// released: let go on purpose (unplug, unbind by someone else), not
	// failed. Guarded by Supervisor.mu.
	released bool
}

// Open takes the functions cfg names (or every free virtio-console
// function), opens them, and publishes the ports present now before it
// returns; later ports, and with WaitDevices later functions, as they
// come. ctx bounds the bring-up only; if it ends meanwhile, Open fails
// with an error wrapping ctx.Err().
func Open(ctx context.Context, cfg Config) (*Supervisor, error) {
	s := newSupervisor(ctx, cfg)
	fns, err := devopen.Select(s.cfg.Sysfs, s.cfg.Devices, s.log)
	if err != nil {
		if !s.cfg.WaitDevices {
			s.cancel()
			return nil, fmt.Errorf("no device to drive: %w", err)
		}
		s.log.Info("no device to drive yet, or not every one named; waiting (--wait-devices)", "why", err.Error())
		fns = s.presentFunctions()
	}
	if err := s.serveSockets(); err != nil {
		s.cancel()
		return nil, err
	}
	if err := s.openStart(ctx, fns); err != nil {
		s.shutdown()
		return nil, err
	}
	n := s.publishStart()
	if s.hooks.Started != nil {
		s.hooks.Started(len(fns), n)
	}
	if s.cfg.WaitDevices {
		if err := s.watchHotplug(); err != nil {
			s.log.Warn("hot-plug of functions disabled: cannot follow kernel uevents", "err", err)
		}
	}
	s.serveDone = make(chan struct{})
	go s.serve()
	return s, nil
}

func newSupervisor(ctx context.Context, cfg Config) *Supervisor {
	h, _ := ctx.Value(hooksKey{}).(Hooks)
	if h.Open == nil {
		h.Open = OpenDevice
	}
	if h.Uevents == nil {
		h.Uevents = func() (hotplug.Uevents, error) { return pciscan.Watch() }
	}
	if cfg.Sysfs == "" {
		cfg.Sysfs = "/sys"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Supervisor{
		cfg: cfg, hooks: h, log: cfg.Logger,
		held:    map[string]*managed{},
		gaveUp:  map[string]bool{},
		stopped: make(chan *managed, 64),
		changed: make(chan struct{}),
		helds:   map[*Held]bool{},
		done:    make(chan struct{}),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s
}

// presentFunctions is, for WaitDevices, the functions that may be driven
// now (devopen.Eligible); the others are adopted when they appear.
func (s *Supervisor) presentFunctions() []pciscan.Function {
	all, err := pciscan.Scan(s.cfg.Sysfs)
	if err != nil {
		s.log.Warn("cannot list PCI functions", "err", err)
		return nil
	}
	var out []pciscan.Function
	for _, f := range all {
		if devopen.Eligible(f, s.cfg.Devices) {
			out = append(out, f)
		}
	}
	return out
}

// serveSockets starts the socket side with its control socket, when
// Config.Sockets asks for it.
func (s *Supervisor) serveSockets() error {
	if s.cfg.Sockets == nil {
		return nil
	}
	ac := *s.cfg.Sockets
	ac.Logger = s.log
	a, err := agent.New(ac)
	if err != nil {
		return fmt.Errorf("cannot start the agent: %w", err)
	}
	ln, err := a.ListenControl()
	if err != nil {
		a.Close()
		return fmt.Errorf("cannot create the control socket: %w", err)
	}
	a.SetDevices(s.deviceStatus)
	s.a = a
	s.served = make(chan error, 1)
	go func() {
		defer guard.Recover()
		s.served <- a.ServeControl(ln)
	}()
	return nil
}

// deviceStatus describes the devices driven now, by index, for the
// agent's status report: those that can say (describer) what was
// negotiated, the others by address only.
func (s *Supervisor) deviceStatus() []agent.DeviceStatus {
	out := []agent.DeviceStatus{}
	for _, m := range s.devices() {
		st := agent.DeviceStatus{Flags: []string{}}
		if d, ok := m.dev.(describer); ok {
			st = d.Describe()
		}
		st.Index, st.Addr = m.index, m.addr
		out = append(out, st)
	}
	return out
}

// spec is how device index i on fn is opened.
func (s *Supervisor) spec(i int, fn pciscan.Function) Spec {
	return Spec{
		Index:         i,
		Function:      fn,
		Explicit:      len(s.cfg.Devices) > 0,
		Bind:          s.cfg.Bind,
		MaxPorts:      s.cfg.MaxPorts,
		DMABudget:     s.cfg.DMABudget,
		Ring:          s.cfg.Ring,
		Poll:          s.cfg.Poll,
		ShutdownFlush: s.cfg.ShutdownFlush,
		MaxResets:     s.hooks.MaxResets,
		Sysfs:         s.cfg.Sysfs,
		Logger:        s.log.With("pci", fn.Addr, "dev", i),
		Report:        s.report,
		Changed:       s.bump,
		Nodes:         s.cfg.Nodes,
	}
}

// openStart opens the functions found at start, in index order. On a
// failure every device opened so far writes the reason to the host,
// unless ctx ended meanwhile.
func (s *Supervisor) openStart(ctx context.Context, fns []pciscan.Function) error {
	for i, f := range fns {
		d, err := s.hooks.Open(ctx, s.spec(i, f))
		if err != nil {
			if ctx.Err() != nil {
				s.log.Info("interrupted while opening devices", "pci", f.Addr, "err", err)
				return fmt.Errorf("interrupted while opening %s: %w", f.Addr, ctx.Err())
			}
			for _, m := range s.devs {
				s.emergency(m, fmt.Sprintf("fatal: cannot open device %s: %v", f.Addr, err))
			}
			return fmt.Errorf("cannot open device %s: %w", f.Addr, err)
		}
		s.add(&managed{index: i, addr: f.Addr, dev: d}, false)
	}
	return nil
}

// add registers an opened device, tells Hooks.Opened and, before any of
// its ports is published, the host: it sees the agent coming up even when
// nothing else works later.
func (s *Supervisor) add(m *managed, hotPlugged bool) {
	s.mu.Lock()
	for len(s.devs) <= m.index {
		s.devs = append(s.devs, nil)
	}
	s.devs[m.index] = m
	s.held[m.addr] = m
	s.mu.Unlock()
	if s.hooks.Opened != nil {
		s.hooks.Opened(m.index, m.addr, m.dev)
	}
	if hotPlugged {
		s.log.Info("device opened", "pci", m.addr, "dev", m.index, "hot_plugged", true)
	} else {
		s.log.Info("device opened", "pci", m.addr, "dev", m.index)
	}
	s.emergency(m, "starting on "+m.addr)
	s.bump()
}

// publishStart publishes the ports present at start, device by device in
// index order and by id within a device, so a name two devices share goes
// to the lower device index (the other is served as vport<D>p<ID>); then
// each device's later ports are fed. It returns how many it published.
func (s *Supervisor) publishStart() int {
	s.mu.Lock()
	devs := append([]*managed(nil), s.devs...)
	s.mu.Unlock()
	n := 0
	for _, m := range devs {
		n += s.publishPresent(m)
	}
	for _, m := range devs {
		s.feed(m)
	}
	return n
}

// publishPresent publishes the ports m had when it was opened.
func (s *Supervisor) publishPresent(m *managed) int {
	m.start = map[agent.Port]bool{}
	for _, p := range m.dev.Present() {
		m.start[p] = true
		s.addPort(m, p)
	}
	return len(m.start)
}

// addPort serves p, a port of m, as a socket (without sockets: nothing).
func (s *Supervisor) addPort(m *managed, p agent.Port) {
	if s.a == nil {
		return
	}
	if err := s.a.AddPort(m.index, p); err != nil && !errors.Is(err, agent.ErrClosed) {
		s.log.Error("cannot publish port", "pci", m.addr, "dev", m.index, "port", p.ID(), "err", err)
	}
}

// report puts a device's event on the event stream (without sockets:
// nowhere).
func (s *Supervisor) report(ev agent.DeviceEvent) {
	if s.a == nil {
		return
	}
	if err := s.a.ReportDevice(ev); err != nil && !errors.Is(err, agent.ErrClosed) {
		s.log.Warn("device event not reported", "dev", ev.Device, "event", ev.Kind, "err", err)
	}
}

// feed publishes the ports m announces later (its first delivery of a
// start port is the one already published and is skipped) until its
// Ports closes; a VFIO device's unplug request releases it.
func (s *Supervisor) feed(m *managed) {
	s.mu.Lock()
	s.running++
	s.mu.Unlock()
	go func() {
		defer guard.Recover()
		for p := range m.dev.Ports() {
			if m.start[p] {
				delete(m.start, p)
				continue
			}
			s.addPort(m, p)
		}
		s.bump()
		s.stopped <- m
	}()
	r, ok := m.dev.(interface{ Requested() <-chan struct{} })
	if !ok || r.Requested() == nil {
		return
	}
	go s.answerRequest(m, r.Requested())
}

// answerRequest releases m when the kernel asks for its function back
// (VFIO's request interrupt), so that the unplug completes.
func (s *Supervisor) answerRequest(m *managed, req <-chan struct{}) {
	defer guard.Recover()
	select {
	case <-req:
		s.Release(m.addr, "the kernel asked for the function back (unplug or unbind)")
	case <-s.ctx.Done():
	}
}
