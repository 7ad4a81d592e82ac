// Package devopen takes virtio-console functions from the kernel and
// brings them up with their data-plane loop: the binding (uio_pci_generic
// or vfio-pci, Choose for auto), the kernel modules, the device files, the
// driver and the loop. internal/supervisor opens every device through it,
// for `vserial-agent run` and package vserial alike.
package devopen

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/u-root/u-root/pkg/kmodule"
	"golang.org/x/sys/unix"

	"github.com/vserial/vserial/dma"
	"github.com/vserial/vserial/driver"
	"github.com/vserial/vserial/internal/kcmdline"
	"github.com/vserial/vserial/pciscan"
	"github.com/vserial/vserial/pump"
	"github.com/vserial/vserial/uio"
	"github.com/vserial/vserial/vfio"
)

// The bindings (run's --bind, vserial.Options.Bind).
const (
	BindUIO  = "uio"
	BindVFIO = "vfio"
	BindAuto = "auto"
)

// UIODriver is the kernel driver the uio binding uses.
const UIODriver = "uio_pci_generic"

// Spec is what opening one function needs.
type Spec struct {
	Index    int // device index, the D of vport<D>p<P> names
	Function pciscan.Function
	// Explicit is set when the caller named the function: it may then be
	// taken from a kernel driver that holds it.
	Explicit  bool
	Bind      string // BindUIO, BindVFIO, or BindAuto ("": auto)
	MaxPorts  int    // 0: as many as the device offers
	MaxResets int    // driver.Config.MaxResets (0: the driver's default)
	// DMABudget bounds the device memory of the function, in bytes (0:
	// the driver's default).
	DMABudget int
	// Ring is driver.Config.Ring: the virtqueue layout (auto, split or
	// packed).
	Ring driver.RingLayout
	// CloseFlush is driver.Config.CloseFlush (negative: no wait).
	CloseFlush time.Duration
	Poll       pump.Poll
	Sysfs      string
	Logger     *slog.Logger
}

// Device is one function brought up: the driver's device and its
// data-plane loop.
type Device struct {
	Dev  *driver.Device
	Loop *pump.Loop
	// Release frees what the driver ran on (the uio or vfio function),
	// after Dev is closed; GiveBack then returns the function to the
	// driver it had (or leaves it unbound).
	Release  func() error
	GiveBack func()
	// Unmapped names a device address never mapped (VFIO type1, for fault
	// injection); nil elsewhere.
	Unmapped func() (uint64, bool)
	// Requested is closed when the kernel asks for the function back
	// (VFIO's request interrupt: an unplug or unbind); nil under uio.
	Requested <-chan struct{}
	// Binding is how the function is driven: "uio", "vfio type1" or
	// "vfio no-IOMMU" (BindingName).
	Binding string
}

// BindingName names how fn, opened with binding bind, is driven: "uio",
// or "vfio type1" / "vfio no-IOMMU" after whether its device addresses go
// through an IOMMU.
func BindingName(bind string, fn driver.Function) string {
	if bind != BindVFIO {
		return BindUIO
	}
	if fn.IOMMU() {
		return "vfio type1"
	}
	return "vfio no-IOMMU"
}

// Close stops the loop, resets the device (the driver sends PORT_OPEN 0
// first), releases what it ran on and gives the function back.
func (d *Device) Close() error {
	d.Loop.Close()
	err := d.Dev.Close()
	if cerr := d.Release(); err == nil {
		err = cerr
	}
	d.GiveBack()
	return err
}

// Open binds the function to uio_pci_generic or vfio-pci (loading the
// modules if needed; BindAuto asks Choose), opens it, brings the virtio
// device up and starts its loop. A failure at any step undoes the steps
// before it.
func Open(ctx context.Context, spec Spec) (_ *Device, err error) {
	log := spec.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
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

	bind, drv, err := loadBinding(spec, log)
	if err != nil {
		return nil, err
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

	fn, release, err := openFunction(spec, bind, log)
	if err != nil {
		return nil, err
	}
	undo = append(undo, func() { release() })
	maxPorts := uint32(0)
	if spec.MaxPorts > 0 {
		maxPorts = uint32(spec.MaxPorts)
	}
	dev, err := driver.Open(ctx, fn, driver.Config{
		MaxPorts:     maxPorts,
		DMABudget:    spec.DMABudget,
		Ring:         spec.Ring,
		Index:        spec.Index,
		MaxResets:    spec.MaxResets,
		CloseFlush:   spec.CloseFlush,
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
	d := &Device{Dev: dev, Loop: loop, Release: release, GiveBack: giveBack, Binding: BindingName(bind, fn)}
	if a, ok := fn.(adapted[*vfio.MSIX]); ok {
		vf := a.f.(*vfio.Function)
		d.Unmapped = vf.UnmappedIOVA
		d.Requested = vf.Requested()
	}
	return d, nil
}

// loadBinding decides the binding (BindAuto asks Choose) and loads the
// modules it needs; it returns the binding and its PCI driver.
func loadBinding(spec Spec, log *slog.Logger) (bind, drv string, err error) {
	bind = spec.Bind
	if bind == BindAuto || bind == "" {
		c := Choose(HostEnv(spec.Sysfs), spec.Function)
		log.Info("bind auto", "bind", c.Bind, "reason", c.Reason)
		bind = c.Bind
	}
	switch bind {
	case BindUIO:
		return bind, UIODriver, ensureModule(spec.Sysfs, UIODriver, UIODriver, log)
	case BindVFIO:
		// vfio first, on its own: it is a dependency of vfio-pci, and only
		// the module named to Probe gets its command-line parameters
		// (vfio.enable_unsafe_noiommu_mode=1).
		if err := ensureModule(spec.Sysfs, "vfio", "", log); err != nil {
			return "", "", err
		}
		if err := ensureModule(spec.Sysfs, vfioModule, vfio.Driver, log); err != nil {
			return "", "", err
		}
		mode, err := checkVFIO(spec.Sysfs, spec.Function)
		if err != nil {
			return "", "", err
		}
		if !mode.NoIOMMU {
			if err := ensureModule(spec.Sysfs, vfioType1Module, "", log); err != nil {
				return "", "", err
			}
		}
		return bind, vfio.Driver, nil
	}
	return "", "", fmt.Errorf("unknown binding %q", bind)
}

// openFunction opens the bound function and takes the interrupt's
// descriptors for the data-plane loop now, before bring-up: under uio that
// closes a descriptor of /dev/uioN, which clears Bus Master
// (uio.IRQ.PollFDs). release closes what it opened.
func openFunction(spec Spec, bind string, log *slog.Logger) (fn driver.Function, release func() error, err error) {
	addr := spec.Function.Addr
	if bind == BindVFIO {
		vf, err := vfio.Open(spec.Sysfs, "/dev", addr, uio.Options{Logger: log})
		if err != nil {
			return nil, nil, err
		}
		fn, release = adapted[*vfio.MSIX]{vf}, vf.Close
	} else {
		uf, err := uio.Open(spec.Sysfs, "/dev", addr, uio.Options{Logger: log})
		if err != nil {
			return nil, nil, err
		}
		fn, release = adapted[*uio.IRQ]{uf}, uf.Close
	}
	pi, ok := fn.IRQ().(driver.PollIRQ)
	if !ok {
		release()
		return nil, nil, fmt.Errorf("virtio-console %s: the interrupt cannot be polled (%T)", addr, fn.IRQ())
	}
	if _, err := pi.PollFDs(); err != nil {
		release()
		return nil, nil, err
	}
	return fn, release, nil
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
	if err := kmodule.Probe(name, kcmdline.ModuleParams(readCmdline(), name)); err != nil {
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

// pciFunction is what uio.Function and vfio.Function have in common: the
// method set of driver.Function with concrete types (uio and vfio must not
// import driver), I being the interrupt type of the binding.
type pciFunction[I driver.IRQ] interface {
	Config() *uio.Config
	BAR(i int) (*uio.BAR, error)
	IRQ() I
	DMA() dma.Allocator
	IOMMU() bool
}

// adapted adapts a uio or vfio function to driver.Function.
type adapted[I driver.IRQ] struct{ f pciFunction[I] }

func (a adapted[I]) Config() driver.ConfigSpace { return a.f.Config() }
func (a adapted[I]) BAR(i int) (driver.BAR, error) {
	b, err := a.f.BAR(i)
	if err != nil {
		return nil, err // not a typed nil in a driver.BAR
	}
	return b, nil
}
func (a adapted[I]) IRQ() driver.IRQ    { return a.f.IRQ() }
func (a adapted[I]) DMA() dma.Allocator { return a.f.DMA() }
func (a adapted[I]) IOMMU() bool        { return a.f.IOMMU() }

var (
	_ pciFunction[*uio.IRQ]   = (*uio.Function)(nil)
	_ pciFunction[*vfio.MSIX] = (*vfio.Function)(nil)
	// The driver services only the queues on the vectors that fired.
	_ driver.VectorIRQ = (*vfio.MSIX)(nil)
)

// Select returns the functions to drive: those named in devices (PCI
// addresses, run's --device), or every virtio-console function no driver
// holds.
func Select(sysfs string, devices []string, log *slog.Logger) ([]pciscan.Function, error) {
	if len(devices) > 0 {
		var out []pciscan.Function
		for _, addr := range devices {
			f, err := pciscan.Lookup(sysfs, addr)
			if err != nil {
				return nil, err
			}
			if !pciscan.IsConsole(f) {
				return nil, fmt.Errorf("--device %s is not a virtio-console function: %v", addr, f)
			}
			out = append(out, f)
		}
		return out, nil
	}
	all, err := pciscan.Scan(sysfs)
	if err != nil {
		return nil, err
	}
	var out []pciscan.Function
	var held []string
	for _, f := range all {
		if !pciscan.IsConsole(f) {
			continue
		}
		if f.Driver == UIODriver {
			// Bound to uio_pci_generic and not held by a kernel driver:
			// an earlier run of ours left it there.
			log.Info("taking virtio-console function already bound to uio_pci_generic", "pci", f.Addr)
			out = append(out, f)
			continue
		}
		if f.Driver != "" {
			held = append(held, f.Addr+" ("+f.Driver+")")
			log.Info("skipping virtio-console function held by a driver; name it with --device to take it", "pci", f.Addr, "driver", f.Driver)
			continue
		}
		out = append(out, f)
	}
	if len(out) == 0 {
		if len(held) > 0 {
			return nil, fmt.Errorf("every virtio-console function is held by a driver: %s; name one with --device to take it", strings.Join(held, ", "))
		}
		return nil, fmt.Errorf("no virtio-console function under %s/bus/pci/devices (QEMU: -device virtio-serial-pci)", sysfs)
	}
	return out, nil
}

// Eligible is Select's rule for one function, for functions that appear
// later (run --wait-devices): with devices named, only those; otherwise a
// virtio-console function no kernel driver holds (or one an earlier run
// left on uio_pci_generic).
func Eligible(f pciscan.Function, devices []string) bool {
	if !pciscan.IsConsole(f) {
		return false
	}
	if len(devices) > 0 {
		return slices.Contains(devices, f.Addr)
	}
	return f.Driver == "" || f.Driver == UIODriver
}
