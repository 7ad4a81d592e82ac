package supervisor

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
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

// Device is one virtio-console function brought up, as the supervisor
// sees it. OpenDevice's devices also hold their ports for Dial; a fake
// (cmd's tests) needs only this.
type Device interface {
	// Ports delivers every port of the device as it appears: those present
	// at start and those hot-plugged later. A port hot-unplugged reports it
	// through its own Removed/Changed; the same id plugged again arrives
	// here as a new Port. The channel is closed when the device stops
	// (Close, or a failure that Err then describes).
	Ports() <-chan agent.Port
	// Present returns the ports the device had when it was opened (QEMU
	// announces its cold-plugged ports during bring-up). Each is also
	// delivered on Ports; Open returns once all of them are published.
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

// Spec is what opening one function needs.
type Spec struct {
	Index    int // device index, the D of vport<D>p<P> names
	Function pciscan.Function
	// Explicit is set when the function was named (Config.Devices): the
	// opener may then take it from a kernel driver that holds it.
	Explicit      bool
	Bind          string // devopen.BindUIO, BindVFIO or BindAuto
	MaxPorts      int    // 0: as many as the device offers
	DMABudget     int    // 0: the driver's default
	Ring          driver.RingLayout
	Poll          pump.Poll
	ShutdownFlush time.Duration // driver.Config.CloseFlush (negative: no wait)
	MaxResets     int           // driver.Config.MaxResets (0: the driver's default)
	Sysfs         string
	Logger        *slog.Logger
	// Report receives the device's own events (resets, protocol
	// violations, limits) for the event stream. It must not block.
	Report func(agent.DeviceEvent)
	// Changed is called at every event of the device's ports (added,
	// changed, removed), to wake a Dial waiting for a port. It must not
	// block.
	Changed func()
	// Nodes, when not nil, says which ports also get a device node
	// (Config.Nodes); nil: none.
	Nodes func(name string) bool
}

// Opener brings one function up (Hooks.Open; OpenDevice in production).
type Opener func(ctx context.Context, spec Spec) (Device, error)

// OpenDevice is the production Opener: devopen brings the function up with
// its data-plane loop.
func OpenDevice(ctx context.Context, spec Spec) (Device, error) {
	od, err := devopen.Open(ctx, devopen.Spec{
		Index:      spec.Index,
		Function:   spec.Function,
		Explicit:   spec.Explicit,
		Bind:       spec.Bind,
		MaxPorts:   spec.MaxPorts,
		DMABudget:  spec.DMABudget,
		Ring:       spec.Ring,
		MaxResets:  spec.MaxResets,
		CloseFlush: spec.ShutdownFlush,
		Poll:       spec.Poll,
		Sysfs:      spec.Sysfs,
		Logger:     spec.Logger,
	})
	if err != nil {
		return nil, err
	}
	return NewDevice(od, spec), nil
}

// NewDevice is od, brought up by devopen (or a test), as a Device whose
// ports Dial can hold; spec gives its index and hooks.
func NewDevice(od *devopen.Device, spec Spec) Device {
	d := &consoleDevice{
		od:      od,
		index:   spec.Index,
		report:  spec.Report,
		changed: spec.Changed,
		log:     spec.Logger,
		ports:   make(chan agent.Port),
		byPort:  map[*driver.Port]*sockPort{},
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	d.nodes = newNodes(spec, d.log)
	for _, p := range od.Dev.Ports() {
		d.present = append(d.present, d.adapt(p))
	}
	go d.forward()
	return d
}

// consoleDevice is a driver.Device with its loop, seen as a Device. Each
// of its ports is a sockPort, made once per driver port.
type consoleDevice struct {
	od      *devopen.Device
	index   int
	report  func(agent.DeviceEvent)
	changed func()
	log     *slog.Logger
	ports   chan agent.Port
	present []agent.Port

	nodes *portnode.Device // the ports' device nodes; nil: none

	mu     sync.Mutex
	byPort map[*driver.Port]*sockPort // the live ports

	once     sync.Once
	closeErr error
	stop     chan struct{}
	done     chan struct{}
}

// forward turns the driver's events into ports for Ports, reports and
// wake-ups. Other port events reach the agent through each port's Changed
// channel.
func (d *consoleDevice) forward() {
	defer guard.Recover()
	defer close(d.done)
	defer close(d.ports)
	for {
		var ev driver.Event
		var ok bool
		select {
		case ev, ok = <-d.od.Dev.Events():
			if !ok {
				return
			}
		case <-d.stop:
			return
		}
		switch ev.Kind {
		case driver.DeviceReset, driver.ProtocolViolation, driver.DeviceLimited:
			if d.report != nil {
				d.report(agentwire.DeviceEvent(d.index, ev))
			}
			continue
		case driver.PortRemoved:
			d.mu.Lock()
			delete(d.byPort, ev.Port)
			d.mu.Unlock()
		}
		var sp *sockPort
		if ev.Kind == driver.PortAdded {
			sp = d.adapt(ev.Port) // before the wake-up: a Dial woken finds it
		}
		if d.changed != nil {
			d.changed()
		}
		if sp == nil {
			continue
		}
		select {
		case d.ports <- sp:
		case <-d.stop:
			return
		}
	}
}

// adapt returns p's sockPort, making it the first time.
func (d *consoleDevice) adapt(p *driver.Port) *sockPort {
	d.mu.Lock()
	defer d.mu.Unlock()
	sp := d.byPort[p]
	if sp == nil {
		sp = &sockPort{Port: p, loop: d.od.Loop, log: d.log}
		if d.nodes != nil && d.od.Loop != nil {
			sp.node = d.nodes.Add(p, d.od.Loop)
		}
		d.byPort[p] = sp
	}
	return sp
}

// find returns the live port called name (the host's name, or
// vport<D>p<ID>), the lowest id first, or nil.
func (d *consoleDevice) find(name string) *sockPort {
	ps := d.od.Dev.Ports()
	slices.SortFunc(ps, func(a, b *driver.Port) int { return int(a.ID()) - int(b.ID()) })
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, p := range ps {
		if sp := d.byPort[p]; sp != nil && (p.Name() == name || p.KernelName() == name) {
			return sp
		}
	}
	return nil
}

func (d *consoleDevice) Ports() <-chan agent.Port { return d.ports }

func (d *consoleDevice) Present() []agent.Port { return d.present }

func (d *consoleDevice) EmergencyWrite(b []byte) error { return d.od.Dev.EmergencyWrite(b) }

// LastGasp is EmergencyWrite after a panic (driver.Device.LastGasp).
func (d *consoleDevice) LastGasp(b []byte) error { return d.od.Dev.LastGasp(b) }

// Requested is closed when the kernel asks for the function back (a VFIO
// unplug or unbind); nil when it cannot ask (uio).
func (d *consoleDevice) Requested() <-chan struct{} { return d.od.Requested }

func (d *consoleDevice) Err() error {
	select {
	case <-d.stop:
		return nil
	default:
	}
	return d.od.Dev.Err()
}

// Close resets the device (the driver sends PORT_OPEN 0 first), then
// releases what it ran on, then gives the function back.
func (d *consoleDevice) Close() error {
	d.once.Do(func() {
		close(d.stop)
		<-d.done
		if d.nodes != nil {
			d.nodes.Close() // the nodes go before the device resets
		}
		d.closeErr = d.od.Close()
	})
	return d.closeErr
}

// Describe is the device's binding and negotiated features.
func (d *consoleDevice) Describe() agent.DeviceStatus {
	return DescribeFeatures(d.od.Binding, d.od.Dev.Features())
}

// FaultInjector is a device that can commit a driver.Fault on purpose (the
// devices OpenDevice opens are). Only cmd's faultinject build uses it.
type FaultInjector interface {
	InjectFault(port uint32, f driver.Fault, addr uint64) error
	Stats() driver.DeviceStats
	// UnmappedAddr is a device address the IOMMU was never told to map
	// (ok false without an IOMMU).
	UnmappedAddr() (addr uint64, ok bool)
}

// InjectFault commits f on port (FaultInjector).
func (d *consoleDevice) InjectFault(port uint32, f driver.Fault, addr uint64) error {
	return d.od.Dev.InjectFault(port, f, addr)
}

// Stats are the device's counters.
func (d *consoleDevice) Stats() driver.DeviceStats { return d.od.Dev.Stats() }

// UnmappedAddr is a device address the IOMMU was never told to map (ok
// false without an IOMMU).
func (d *consoleDevice) UnmappedAddr() (uint64, bool) {
	if d.od.Unmapped == nil {
		return 0, false
	}
	return d.od.Unmapped()
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

// DescribeFeatures turns negotiated feature bits into a DeviceStatus.
func DescribeFeatures(binding string, feat uint64) agent.DeviceStatus {
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

// describer is a device that says what was negotiated with it, for the
// status report.
type describer interface {
	Describe() agent.DeviceStatus
}

var (
	_ Device        = (*consoleDevice)(nil)
	_ describer     = (*consoleDevice)(nil)
	_ FaultInjector = (*consoleDevice)(nil)
)
