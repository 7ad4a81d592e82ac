package main

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/vserial/vserial/agent"
	"github.com/vserial/vserial/driver"
	"github.com/vserial/vserial/internal/agentwire"
	"github.com/vserial/vserial/internal/devopen"
	"github.com/vserial/vserial/internal/guard"
	"github.com/vserial/vserial/internal/portnode"
	"github.com/vserial/vserial/pciscan"
	"github.com/vserial/vserial/pump"
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
	// DMABudget bounds the device memory of the function, in bytes (0:
	// the driver's default).
	DMABudget int
	Ring      driver.RingLayout
	Poll      pump.Poll
	// ShutdownFlush is driver.Config.CloseFlush (negative: no wait).
	ShutdownFlush time.Duration
	Sysfs         string
	Logger        *slog.Logger
	// Report, when not nil, receives the device's own events (resets,
	// protocol violations) for the agent's event stream. It must not block.
	Report func(agent.DeviceEvent)
	// Nodes, when not nil, says which ports also get a device node
	// (nodes.go); nil: none.
	Nodes func(name string) bool
}

// deviceOpener brings one function up. realMain takes it as a parameter so
// tests run the whole command against fake devices.
type deviceOpener func(ctx context.Context, spec deviceSpec) (device, error)

// openDevice is the production deviceOpener: devopen brings the function
// up with its data-plane loop, and the agent sees it as a consoleDevice.
func openDevice(ctx context.Context, spec deviceSpec) (device, error) {
	od, err := devopen.Open(ctx, devopen.Spec{
		Index:      spec.Index,
		Function:   spec.Function,
		Explicit:   spec.Explicit,
		Bind:       spec.Bind,
		MaxPorts:   spec.MaxPorts,
		DMABudget:  spec.DMABudget,
		Ring:       spec.Ring,
		MaxResets:  maxResets,
		CloseFlush: spec.ShutdownFlush,
		Poll:       spec.Poll,
		Sysfs:      spec.Sysfs,
		Logger:     spec.Logger,
	})
	if err != nil {
		return nil, err
	}
	cd := newConsoleDevice(od.Dev, od.Loop, od.Release, od.GiveBack, spec.Index, spec.Report, newNodes(spec))
	cd.unmapped = od.Unmapped
	cd.requested = od.Requested
	cd.binding = od.Binding
	return cd, nil
}

// describer is a device that says what was negotiated with it, for the
// status report (supervisor.deviceStatus fills in Index and Addr).
type describer interface {
	Describe() agent.DeviceStatus
}

// Describe is the device's binding and negotiated features.
func (d *consoleDevice) Describe() agent.DeviceStatus {
	return describeFeatures(d.binding, d.dev.Features())
}

// featureNames are the feature bits a DeviceStatus names, in its order.
var featureNames = []struct {
	bit  uint64
	name string
}{
	{driver.FeatureConsoleMultiport, "multiport"},
	{driver.FeatureEventIdx, "event_idx"},
	{driver.FeatureIndirectDesc, "indirect"},
	{driver.FeatureConsoleEmergWrite, "emerg_write"},
	{driver.FeatureConsoleSize, "size"},
	{driver.FeatureVersion1, "version_1"},
	{driver.FeatureAccessPlatform, "access_platform"},
}

// describeFeatures turns negotiated feature bits into a DeviceStatus.
func describeFeatures(binding string, feat uint64) agent.DeviceStatus {
	st := agent.DeviceStatus{Binding: binding, Features: fmt.Sprintf("%#x", feat), Ring: "split", Flags: []string{}}
	if feat&driver.FeatureRingPacked != 0 {
		st.Ring = "packed"
	}
	for _, f := range featureNames {
		if feat&f.bit != 0 {
			st.Flags = append(st.Flags, f.name)
		}
	}
	return st
}

// newConsoleDevice wraps a driver.Device that is up. release frees what the
// driver ran on (the uio function) after the device is closed; restore then
// gives the function back. report (nil: none) gets the device's resets and
// protocol violations, as device index.
func newConsoleDevice(dev *driver.Device, loop *pump.Loop, release func() error, restore func(), index int, report func(agent.DeviceEvent), nodes *portnode.Device) *consoleDevice {
	d := &consoleDevice{
		nodes:   nodes,
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
	// requested is closed when the kernel asks for the function back
	// (VFIO's request interrupt); nil under uio.
	requested <-chan struct{}
	index     int
	report    func(agent.DeviceEvent)
	binding   string           // devopen.Device.Binding ("" if unknown)
	nodes     *portnode.Device // the ports' device nodes; nil: none

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
			if ev.Kind == driver.DeviceReset || ev.Kind == driver.ProtocolViolation || ev.Kind == driver.DeviceLimited {
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
	d.report(agentwire.DeviceEvent(d.index, ev))
}

func (d *consoleDevice) Ports() <-chan agent.Port { return d.ports }

func (d *consoleDevice) Present() []agent.Port { return d.present }

func (d *consoleDevice) EmergencyWrite(b []byte) error { return d.dev.EmergencyWrite(b) }

// Requested is closed when the kernel asks for the function back (a VFIO
// unplug or unbind); nil when it cannot ask (uio).
func (d *consoleDevice) Requested() <-chan struct{} { return d.requested }

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
		if d.nodes != nil {
			d.nodes.Close()
		}
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
	if d.nodes != nil {
		return nodePort{loopPort{port{p}, d.loop}, d.nodes.Add(p, d.loop)}
	}
	return loopPort{port{p}, d.loop}
}

// port adapts *driver.Port to agent.Port: driver must not import agent, so
// the counters are converted (agentwire).
type port struct{ *driver.Port }

func (p port) Stats() agent.PortStats { return agentwire.Stats(p.Port, nil) }

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
func (p loopPort) Stats() agent.PortStats { return agentwire.Stats(p.Port, p.loop) }

var (
	_ agent.Port     = port{}
	_ agent.FDServer = loopPort{}
)
