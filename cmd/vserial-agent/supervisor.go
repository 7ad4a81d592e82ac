package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/vserial/vserial/agent"
	"github.com/vserial/vserial/internal/devopen"
	"github.com/vserial/vserial/internal/guard"
	"github.com/vserial/vserial/internal/hotplug"
	"github.com/vserial/vserial/pciscan"
)

// supervisor is `run` as a plan: open the functions found at start
// (openStart), publish their ports (publishStart), feed the ports each
// device announces later (feed), adopt and let go of whole functions as
// they come and go (watchHotplug, Adopt, Release), answer devices that
// stop (serve), and shut down (shutdown).
type supervisor struct {
	ctx    context.Context
	cfg    runConfig
	log    *slog.Logger
	open   deviceOpener
	a      *agent.Agent
	words  *lastWords
	served chan error // the control socket's server result

	openErr error // why openStart failed

	mu      sync.Mutex
	devs    []*managed          // by device index, never reused; nil while opening
	held    map[string]*managed // functions the agent drives now, by address
	gaveUp  map[string]bool     // functions not to adopt again until removed
	running int                 // devices fed whose Ports are still open
	closing bool                // shutdown closes every device: their ends are expected
	stopped chan *managed       // a device's Ports closed

	hpStop context.CancelFunc // ends the hot-plug watcher (nil: none)
	hpDone chan struct{}
}

// managed is one device the supervisor opened.
type managed struct {
	index int
	addr  string
	dev   device // nil while it is being opened
	start map[agent.Port]bool
	// released: let go on purpose (unplug, unbind by someone else), not
	// failed. Guarded by supervisor.mu.
	released bool
}

func newSupervisor(ctx context.Context, cfg runConfig, log *slog.Logger, open deviceOpener, a *agent.Agent) *supervisor {
	s := &supervisor{
		ctx: ctx, cfg: cfg, log: log, open: open, a: a,
		words:   &lastWords{log: log},
		served:  make(chan error, 1),
		held:    map[string]*managed{},
		gaveUp:  map[string]bool{},
		stopped: make(chan *managed, 64),
	}
	a.SetDevices(s.deviceStatus)
	return s
}

// deviceStatus describes the devices driven now, by index, for the
// agent's status report: those that can say (describer) what was
// negotiated, the others by address only.
func (s *supervisor) deviceStatus() []agent.DeviceStatus {
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
func (s *supervisor) spec(i int, fn pciscan.Function) deviceSpec {
	return deviceSpec{
		Index:         i,
		Function:      fn,
		Explicit:      len(s.cfg.Devices) > 0,
		Bind:          s.cfg.Bind,
		MaxPorts:      s.cfg.MaxPorts,
		DMABudget:     s.cfg.DMABudget,
		Ring:          s.cfg.Ring,
		Poll:          s.cfg.Poll,
		ShutdownFlush: s.cfg.ShutdownFlush,
		Sysfs:         s.cfg.Sysfs,
		Logger:        s.log.With("pci", fn.Addr, "dev", i),
		Report:        func(ev agent.DeviceEvent) { reportDevice(s.a, ev, s.log) },
		Nodes:         nodeWant(s.cfg),
	}
}

// openStart opens the functions found at start, in index order. On a
// failure it reports false and the exit code: exitOK when ctx ended
// meanwhile, exitFailure otherwise (openErr says why; every device opened
// so far has written the reason to the host).
func (s *supervisor) openStart(fns []pciscan.Function) (int, bool) {
	for i, f := range fns {
		d, err := s.open(s.ctx, s.spec(i, f))
		if err != nil {
			if s.ctx.Err() != nil {
				s.log.Info("interrupted while opening devices", "pci", f.Addr, "err", err)
				return exitOK, false
			}
			for _, m := range s.devs {
				emergencyLine(m.dev, m.addr, s.log, fmt.Sprintf("fatal: cannot open device %s: %v", f.Addr, err))
			}
			s.openErr = fmt.Errorf("%s: %w", f.Addr, err)
			return exitFailure, false
		}
		s.add(&managed{index: i, addr: f.Addr, dev: d})
		s.log.Info("device opened", "pci", f.Addr, "dev", i)
		// Before any port is published: the host sees the agent coming up
		// even when nothing else works later.
		emergencyLine(d, f.Addr, s.log, "starting on "+f.Addr)
	}
	return exitOK, true
}

// add registers an opened device.
func (s *supervisor) add(m *managed) {
	s.mu.Lock()
	for len(s.devs) <= m.index {
		s.devs = append(s.devs, nil)
	}
	s.devs[m.index] = m
	s.held[m.addr] = m
	s.mu.Unlock()
	s.words.add(m.dev, m.addr)
}

// startDevices returns the devices opened at start, by index.
func (s *supervisor) startDevices() []device {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]device, 0, len(s.devs))
	for _, m := range s.devs {
		out = append(out, m.dev)
	}
	return out
}

// publishStart publishes the ports present at start, device by device in
// index order and by id within a device, so a name two devices share goes
// to the lower device index (the other is served as vport<D>p<ID>); then
// each device's later ports are fed. It returns how many it published.
func (s *supervisor) publishStart() int {
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
func (s *supervisor) publishPresent(m *managed) int {
	m.start = map[agent.Port]bool{}
	for _, p := range m.dev.Present() {
		m.start[p] = true
		if err := s.a.AddPort(m.index, p); err != nil {
			s.log.Error("cannot publish port", "pci", m.addr, "dev", m.index, "port", p.ID(), "err", err)
		}
	}
	return len(m.start)
}

// feed publishes the ports m announces later (its first delivery of a
// start port is the one already published and is skipped) until its
// Ports closes; a VFIO device's unplug request releases it.
func (s *supervisor) feed(m *managed) {
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
			if err := s.a.AddPort(m.index, p); err != nil && !errors.Is(err, agent.ErrClosed) {
				s.log.Error("cannot publish port", "pci", m.addr, "dev", m.index, "port", p.ID(), "err", err)
			}
		}
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
func (s *supervisor) answerRequest(m *managed, req <-chan struct{}) {
	defer guard.Recover()
	select {
	case <-req:
		s.Release(m.addr, "the kernel asked for the function back (unplug or unbind)")
	case <-s.ctx.Done():
	}
}

// serve waits until ctx ends or, without --wait-devices, every device
// stopped, and answers each device that stops. It returns the exit code.
func (s *supervisor) serve() int {
	for {
		s.mu.Lock()
		running := s.running
		s.mu.Unlock()
		if running == 0 && !s.cfg.WaitDevices {
			s.log.Error("every device stopped; exiting")
			for _, m := range s.devices() {
				emergencyLine(m.dev, m.addr, s.log, "fatal: every device stopped; exiting")
			}
			return exitFailure
		}
		select {
		case <-s.ctx.Done():
			s.log.Info("shutting down")
			return exitOK
		case m := <-s.stopped:
			s.ended(m)
		}
	}
}

// ended answers a device whose Ports closed: released on purpose, or
// failed (reported, and its function not adopted again until removed).
func (s *supervisor) ended(m *managed) {
	s.mu.Lock()
	s.running--
	released := m.released
	if s.closing {
		s.mu.Unlock()
		return
	}
	if !released {
		s.gaveUp[m.addr] = true
	}
	s.mu.Unlock()
	if released {
		s.log.Info("device let go", "pci", m.addr, "dev", m.index)
		return
	}
	err := m.dev.Err()
	s.log.Error("device stopped", "pci", m.addr, "dev", m.index, "err", err)
	why := "stopped"
	if err != nil {
		why = err.Error()
	}
	reportDevice(s.a, agent.DeviceEvent{Kind: agent.EventDeviceFailed, Device: m.index, Reason: why}, s.log)
	emergencyLine(m.dev, m.addr, s.log, fmt.Sprintf("fatal: device %s stopped: %v", m.addr, err))
}

// devices returns the devices opened and not let go.
func (s *supervisor) devices() []*managed {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*managed
	for _, m := range s.devs {
		if m != nil && m.dev != nil && !m.released {
			out = append(out, m)
		}
	}
	return out
}

// shutdown stops the hot-plug watcher, closes the agent (clients see end
// of file, the host sees the ports closed), then every device, and waits
// for their feeders.
func (s *supervisor) shutdown() {
	if s.hpStop != nil {
		s.hpStop()
		<-s.hpDone
	}
	s.mu.Lock()
	s.closing = true
	s.mu.Unlock()
	s.a.Close()
	if err := <-s.served; err != nil && !errors.Is(err, agent.ErrClosed) {
		s.log.Warn("control socket", "err", err)
	}
	for _, m := range s.devices() {
		if err := m.dev.Close(); err != nil {
			s.log.Error("closing device", "pci", m.addr, "err", err)
		}
	}
	// Close ends every Ports channel; wait for the feeders.
	for {
		s.mu.Lock()
		running := s.running
		s.mu.Unlock()
		if running == 0 {
			return
		}
		s.ended(<-s.stopped)
	}
}

// newUevents opens the kernel's uevent stream (tests replace it).
var newUevents = func() (hotplug.Events, error) { return pciscan.Watch() }

// watchHotplug starts following the kernel's uevents (run --wait-devices).
func (s *supervisor) watchHotplug() error {
	ev, err := newUevents()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(s.ctx)
	s.hpStop, s.hpDone = cancel, make(chan struct{})
	go func() {
		defer guard.Recover()
		defer close(s.hpDone)
		if err := hotplug.Run(ctx, ev, hotplug.Config{Sysfs: s.cfg.Sysfs, Log: s.log}, s); err != nil {
			s.log.Warn("hot-plug of functions stopped: kernel uevents failed", "err", err)
		}
	}()
	s.log.Info("waiting for virtio-console functions to appear (--wait-devices)")
	return nil
}

// Held is hotplug.Owner's: the agent drives (or is opening) addr.
func (s *supervisor) Held(addr string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.held[addr] != nil
}

// Eligible is hotplug.Owner's: the start-up rule (devopen.Eligible), and
// never a function given up on until it is removed.
func (s *supervisor) Eligible(fn pciscan.Function) bool {
	s.mu.Lock()
	gave := s.gaveUp[fn.Addr]
	s.mu.Unlock()
	return !gave && devopen.Eligible(fn, s.cfg.Devices)
}

// Adopt is hotplug.Owner's: fn is opened as the next device index and its
// ports published.
func (s *supervisor) Adopt(fn pciscan.Function) {
	s.mu.Lock()
	if s.held[fn.Addr] != nil || s.ctx.Err() != nil {
		s.mu.Unlock()
		return
	}
	m := &managed{index: len(s.devs), addr: fn.Addr}
	s.devs = append(s.devs, nil)
	s.held[fn.Addr] = m // held while opening: our own bind uevent must not adopt it twice
	s.mu.Unlock()
	d, err := s.open(s.ctx, s.spec(m.index, fn))
	if err != nil {
		s.mu.Lock()
		delete(s.held, fn.Addr)
		s.gaveUp[fn.Addr] = true
		s.mu.Unlock()
		s.log.Error("cannot open the new device", "pci", fn.Addr, "dev", m.index, "err", err)
		reportDevice(s.a, agent.DeviceEvent{Kind: agent.EventDeviceFailed, Device: m.index, Reason: "cannot open " + fn.Addr + ": " + err.Error()}, s.log)
		return
	}
	m.dev = d
	s.add(m)
	s.log.Info("device opened", "pci", fn.Addr, "dev", m.index, "hot_plugged", true)
	emergencyLine(d, fn.Addr, s.log, "starting on "+fn.Addr)
	reportDevice(s.a, agent.DeviceEvent{Kind: agent.EventDeviceAdded, Device: m.index, Reason: "function " + fn.Addr + " appeared"}, s.log)
	s.publishPresent(m)
	s.feed(m)
}

// Release is hotplug.Owner's: the function at addr is going; its device is
// closed now (its ports and sockets go, a VFIO device fd is closed so the
// kernel's removal completes) and it is not adopted again until removed.
func (s *supervisor) Release(addr, why string) {
	s.mu.Lock()
	m := s.held[addr]
	if m == nil || m.dev == nil || m.released {
		s.mu.Unlock()
		return
	}
	m.released = true
	delete(s.held, addr)
	s.gaveUp[addr] = true
	s.mu.Unlock()
	s.log.Warn("letting go of the function", "pci", addr, "dev", m.index, "why", why)
	reportDevice(s.a, agent.DeviceEvent{Kind: agent.EventDeviceRemoved, Device: m.index, Reason: why}, s.log)
	if err := m.dev.Close(); err != nil {
		s.log.Info("closing the device that went away", "pci", addr, "dev", m.index, "err", err)
	}
}

// Gone is hotplug.Owner's: a function plugged at addr later is new.
func (s *supervisor) Gone(addr string) {
	s.mu.Lock()
	delete(s.gaveUp, addr)
	s.mu.Unlock()
}
