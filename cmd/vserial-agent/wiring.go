package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/u-root/u-root/pkg/kmodule"
	"golang.org/x/sys/unix"

	"github.com/vserial/vserial/agent"
	"github.com/vserial/vserial/dma"
	"github.com/vserial/vserial/driver"
	"github.com/vserial/vserial/internal/guard"
	"github.com/vserial/vserial/pciscan"
	"github.com/vserial/vserial/pump"
	"github.com/vserial/vserial/uio"
)

// device is one virtio-console function brought up for the agent.
type device interface {
	// Ports delivers every port of the device as it appears: those present
	// at start and those hot-plugged later. A port hot-unplugged reports it
	// through its own Removed/Changed; the same id plugged again arrives
	// here as a new Port. The channel is closed when the device stops
	// (Close, or a failure that Err then describes).
	Ports() <-chan agent.Port
	// Present returns the ports the device had when it was opened (QEMU
	// announces its cold-plugged ports during bring-up). Each is also
	// delivered on Ports; the agent reports itself ready once all of them
	// are published.
	Present() []agent.Port
	// Err says why the device stopped, once Ports is closed; nil after Close.
	Err() error
	// Close resets the device, releases its memory and interrupt, gives
	// the function back to the driver it had before, and closes Ports.
	Close() error
	// EmergencyWrite writes b to the host through the device's emergency
	// channel (VIRTIO_CONSOLE_F_EMERG_WRITE), which needs no port and still
	// works after the device failed; an error when the device has none.
	EmergencyWrite(b []byte) error
}

// deviceSpec is what opening one function needs.
type deviceSpec struct {
	Index    int // device index, the D of vport<D>p<P> socket names
	Function pciscan.Function
	// Explicit is set when the operator named the function with --device:
	// the opener may then take it from a kernel driver that holds it.
	Explicit bool
	Bind     string // bindUIO, bindVFIO or bindAuto
	MaxPorts int    // 0: as many as the device offers
	Ring     driver.RingLayout
	Poll     pump.Poll
	// ShutdownFlush is driver.Config.CloseFlush (negative: no wait).
	ShutdownFlush time.Duration
	Sysfs         string
	Logger        *slog.Logger
	// Report, when not nil, receives the device's own events (resets,
	// protocol violations) for the agent's event stream. It must not block.
	Report func(agent.DeviceEvent)
}

// deviceOpener brings one function up. realMain takes it as a parameter so
// tests run the whole command against fake devices.
type deviceOpener func(ctx context.Context, spec deviceSpec) (device, error)

const uioDriver = "uio_pci_generic"

// openDevice is the production deviceOpener: it binds the function to
// uio_pci_generic or vfio-pci (loading the modules if needed; --bind auto
// asks chooseBind), opens it, brings the virtio device up and reports its
// ports. A failure at any step undoes the steps before it.
func openDevice(ctx context.Context, spec deviceSpec) (_ device, err error) {
	log := spec.Logger
	if log == nil {
		log = slog.Default()
	}
	addr := spec.Function.Addr
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()

	bind := spec.Bind
	if bind == bindAuto || bind == "" {
		c := chooseBind(hostBindEnv(spec.Sysfs), spec.Function)
		log.Info("bind auto", "bind", c.Bind, "reason", c.Reason)
		bind = c.Bind
	}
	drv := uioDriver
	var mode vfioMode
	switch bind {
	case bindUIO:
		if err := ensureModule(spec.Sysfs, uioDriver, uioDriver, log); err != nil {
			return nil, err
		}
	case bindVFIO:
		drv = uio.VFIODriver
		// vfio first, on its own: it is a dependency of vfio-pci, and only
		// the module named to Probe gets its command-line parameters
		// (vfio.enable_unsafe_noiommu_mode=1).
		if err := ensureModule(spec.Sysfs, "vfio", "", log); err != nil {
			return nil, err
		}
		if err := ensureModule(spec.Sysfs, vfioModule, uio.VFIODriver, log); err != nil {
			return nil, err
		}
		if mode, err = checkVFIO(spec.Sysfs, spec.Function); err != nil {
			return nil, err
		}
		if !mode.NoIOMMU {
			if err := ensureModule(spec.Sysfs, vfioType1Module, "", log); err != nil {
				return nil, err
			}
		}
	default:
		return nil, fmt.Errorf("unknown binding %q", bind)
	}
	prev := spec.Function.Driver
	took := false // we bound the function to drv: give it back on Close
	if prev != drv {
		took = true
		prev, err = pciscan.Take(spec.Sysfs, addr, drv, spec.Explicit)
		if err != nil {
			return nil, err
		}
		log.Info("function bound", "driver", drv, "previous", driverName(prev))
		undo = append(undo, func() { restore(spec.Sysfs, addr, prev, log) })
	} else {
		prev = ""
	}

	var fn driver.Function
	var release func() error
	if bind == bindVFIO {
		vf, err := uio.OpenVFIO(spec.Sysfs, "/dev", addr, uio.Options{Logger: log})
		if err != nil {
			return nil, err
		}
		fn, release = vfioFunction{vf}, vf.Close
	} else {
		uf, err := uio.Open(spec.Sysfs, "/dev", addr, uio.Options{Logger: log})
		if err != nil {
			return nil, err
		}
		fn, release = uioFunction{uf}, uf.Close
	}
	undo = append(undo, func() { release() })
	// The data-plane loop waits for the interrupt in its own epoll set.
	// Take its descriptors now, before bring-up: under uio that closes a
	// descriptor of /dev/uioN, which clears Bus Master (uio.IRQ.PollFDs).
	pi, ok := fn.IRQ().(driver.PollIRQ)
	if !ok {
		return nil, fmt.Errorf("virtio-console %s: the interrupt cannot be polled (%T)", addr, fn.IRQ())
	}
	if _, err := pi.PollFDs(); err != nil {
		return nil, err
	}

	maxPorts := uint32(0)
	if spec.MaxPorts > 0 {
		maxPorts = uint32(spec.MaxPorts)
	}
	dev, err := driver.Open(ctx, fn, driver.Config{
		MaxPorts:     maxPorts,
		Index:        spec.Index,
		MaxResets:    maxResets,
		CloseFlush:   spec.ShutdownFlush,
		Ring:         spec.Ring,
		ExternalLoop: true,
		Logger:       log,
	})
	if err != nil {
		return nil, fmt.Errorf("bring up virtio-console %s: %w", addr, err)
	}
	loop, err := pump.New(dev, pump.Options{Poll: spec.Poll, Logger: log})
	if err != nil {
		dev.Close()
		return nil, fmt.Errorf("virtio-console %s: data plane: %w", addr, err)
	}
	// Back to the driver it had, or to none (unbound) if it had none:
	// only a function that came to us already bound to drv stays there.
	giveBack := func() {}
	if took {
		giveBack = func() { restore(spec.Sysfs, addr, prev, log) }
	}
	cd := newConsoleDevice(dev, loop, release, giveBack, spec.Index, spec.Report)
	if vf, ok := fn.(vfioFunction); ok {
		cd.unmapped = vf.f.UnmappedIOVA
	}
	return cd, nil
}

// newConsoleDevice wraps a driver.Device that is up. release frees what the
// driver ran on (the uio function) after the device is closed; restore then
// gives the function back. report (nil: none) gets the device's resets and
// protocol violations, as device index.
func newConsoleDevice(dev *driver.Device, loop *pump.Loop, release func() error, restore func(), index int, report func(agent.DeviceEvent)) *consoleDevice {
	d := &consoleDevice{
		dev:     dev,
		loop:    loop,
		release: release,
		ports:   make(chan agent.Port),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
		restore: restore,
		index:   index,
		report:  report,
	}
	for _, p := range dev.Ports() {
		d.present = append(d.present, d.adapt(p))
	}
	go d.forward()
	return d
}

// ensureModule loads kernel module name (with its dependencies, from
// /lib/modules/$(uname -r)) unless PCI driver drv is already registered
// (drv "": unless the module is loaded).
func ensureModule(sysfs, name, drv string, log *slog.Logger) error {
	present := func() bool {
		if drv == "" {
			return pciscan.ModuleLoaded(sysfs, name)
		}
		return pciscan.DriverRegistered(sysfs, drv)
	}
	if present() {
		return nil
	}
	if err := kmodule.Probe(name, cmdlineParams(readCmdline(), name)); err != nil {
		var u unix.Utsname
		_ = unix.Uname(&u)
		rel := unix.ByteSliceToString(u.Release[:])
		return fmt.Errorf("kernel module %s is not loaded and could not be loaded from %s: %w (install the module for kernel %s or load it before starting)",
			name, filepath.Join("/lib/modules", rel), err, rel)
	}
	log.Info("kernel module loaded", "module", name)
	// A module that is built in has no sysfs/module entry unless it has
	// parameters, and Probe succeeds for it: only a driver can be checked.
	if drv != "" && !present() {
		return fmt.Errorf("kernel module %s loaded but no driver %s appeared under %s/bus/pci/drivers", name, drv, sysfs)
	}
	return nil
}

// readCmdline returns the kernel command line, "" if it cannot be read.
func readCmdline() string {
	b, _ := os.ReadFile("/proc/cmdline")
	return string(b)
}

// cmdlineParams picks the parameters for module out of a kernel command
// line ("module.param=value" words; dashes and underscores in the module
// name are the same), as modprobe does: the kernel applies them by itself
// only to built-in modules.
func cmdlineParams(cmdline, module string) string {
	want := strings.ReplaceAll(module, "-", "_") + "."
	var out []string
	for _, w := range strings.Fields(cmdline) {
		mod, param, ok := strings.Cut(w, ".")
		if !ok || param == "" || strings.ReplaceAll(mod, "-", "_")+"." != want {
			continue
		}
		if k, _, _ := strings.Cut(param, "="); k == "" || strings.ContainsAny(k, "/") {
			continue
		}
		out = append(out, param)
	}
	return strings.Join(out, " ")
}

func restore(sysfs, addr, prev string, log *slog.Logger) {
	if err := pciscan.Restore(sysfs, addr, prev); err != nil {
		log.Warn("cannot give the function back", "driver", driverName(prev), "err", err)
		return
	}
	log.Info("function given back", "driver", driverName(prev))
}

func driverName(d string) string {
	if d == "" {
		return "(none)"
	}
	return d
}

// consoleDevice is a driver.Device seen as a device of the agent.
type consoleDevice struct {
	dev     *driver.Device
	loop    *pump.Loop // the data plane; nil: the driver's own event loop
	release func() error
	ports   chan agent.Port
	present []agent.Port
	restore func()
	// unmapped names a device address never mapped (VFIO type1), for
	// fault injection; nil elsewhere.
	unmapped func() (uint64, bool)
	index    int
	report   func(agent.DeviceEvent)

	once     sync.Once
	closeErr error
	stop     chan struct{}
	done     chan struct{}
}

// forward turns the driver's PortAdded events into agent ports and its
// device events into reports. Other port events reach the agent through
// each port's Changed channel.
func (d *consoleDevice) forward() {
	defer guard.Recover()
	defer close(d.done)
	defer close(d.ports)
	for {
		select {
		case ev, ok := <-d.dev.Events():
			if !ok {
				return
			}
			if ev.Kind == driver.DeviceReset || ev.Kind == driver.ProtocolViolation {
				d.reportEvent(ev)
				continue
			}
			if ev.Kind != driver.PortAdded {
				continue
			}
			select {
			case d.ports <- d.adapt(ev.Port):
			case <-d.stop:
				return
			}
		case <-d.stop:
			return
		}
	}
}

// reportEvent hands a driver's device event to report, in the agent's terms.
func (d *consoleDevice) reportEvent(ev driver.PortEvent) {
	if d.report == nil {
		return
	}
	out := agent.DeviceEvent{Kind: agent.EventDeviceReset, Device: d.index, Violations: ev.Violations, Reason: "unknown"}
	if ev.Kind == driver.ProtocolViolation {
		out.Kind = agent.EventProtocolViolation
	}
	if ev.Err != nil {
		out.Reason = ev.Err.Error()
	}
	if ev.Port != nil {
		id := ev.Port.ID()
		out.Port = &id
	}
	d.report(out)
}

func (d *consoleDevice) Ports() <-chan agent.Port { return d.ports }

func (d *consoleDevice) Present() []agent.Port { return d.present }

func (d *consoleDevice) EmergencyWrite(b []byte) error { return d.dev.EmergencyWrite(b) }

// LastGasp is EmergencyWrite after a panic (driver.Device.LastGasp).
func (d *consoleDevice) LastGasp(b []byte) error { return d.dev.LastGasp(b) }

func (d *consoleDevice) Err() error {
	select {
	case <-d.stop:
		return nil
	default:
	}
	return d.dev.Err()
}

// Close resets the device (the driver sends PORT_OPEN 0 first), then
// releases what it ran on, then gives the function back.
func (d *consoleDevice) Close() error {
	d.once.Do(func() {
		close(d.stop)
		<-d.done
		if d.loop != nil {
			d.loop.Close()
		}
		err := d.dev.Close()
		if cerr := d.release(); err == nil {
			err = cerr
		}
		d.restore()
		d.closeErr = err
	})
	return d.closeErr
}

// adapt makes a driver port an agent port: served by the device's loop
// when it has one.
func (d *consoleDevice) adapt(p *driver.Port) agent.Port {
	if d.loop == nil {
		return port{p}
	}
	return loopPort{port{p}, d.loop}
}

// port adapts *driver.Port to agent.Port: driver must not import agent, so
// the counters are converted here.
type port struct{ *driver.Port }

func (p port) Stats() agent.PortStats {
	s := p.Port.Stats()
	return agent.PortStats{BytesIn: s.BytesIn, BytesOut: s.BytesOut, Discarded: s.Discarded, Violations: s.Violations}
}

// loopPort is a port whose clients the device's data-plane loop serves
// (agent.FDServer).
type loopPort struct {
	port
	loop *pump.Loop
}

func (p loopPort) ServeFD(ctx context.Context, fd int) error {
	return p.loop.Serve(ctx, p.Port, fd)
}

// Stats adds the loop's counters: the port's own, and the device's under
// "loop_" (the same for every port of the device).
func (p loopPort) Stats() agent.PortStats {
	s := p.port.Stats()
	s.Counters = p.loop.PortCounters(p.ID())
	for k, v := range p.loop.Counters() {
		s.Counters["loop_"+k] = v
	}
	return s
}

// uioFunction adapts *uio.Function to driver.Function (uio must not import
// driver, so its methods return concrete types).
type uioFunction struct{ f *uio.Function }

func (a uioFunction) Config() driver.ConfigSpace { return a.f.Config() }
func (a uioFunction) BAR(i int) (driver.BAR, error) {
	b, err := a.f.BAR(i)
	if err != nil {
		return nil, err
	}
	return b, nil
}
func (a uioFunction) IRQ() driver.IRQ    { return a.f.IRQ() }
func (a uioFunction) DMA() dma.Allocator { return a.f.DMA() }
func (a uioFunction) IOMMU() bool        { return a.f.IOMMU() }

// vfioFunction adapts *uio.VFIOFunction to driver.Function.
type vfioFunction struct{ f *uio.VFIOFunction }

func (a vfioFunction) Config() driver.ConfigSpace { return a.f.Config() }
func (a vfioFunction) BAR(i int) (driver.BAR, error) {
	b, err := a.f.BAR(i)
	if err != nil {
		return nil, err
	}
	return b, nil
}
func (a vfioFunction) IRQ() driver.IRQ    { return a.f.IRQ() }
func (a vfioFunction) DMA() dma.Allocator { return a.f.DMA() }
func (a vfioFunction) IOMMU() bool        { return a.f.IOMMU() }

var (
	_ driver.Function = vfioFunction{}
	// The driver services only the queues on the vectors that fired.
	_ driver.VectorIRQ = (*uio.MSIX)(nil)
	_ agent.Port       = port{}
	_ agent.FDServer   = loopPort{}
	_ driver.Function  = uioFunction{}
)
