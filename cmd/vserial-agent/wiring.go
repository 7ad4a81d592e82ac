package main

import (
	"context"
	"errors"
	"log/slog"

	"github.com/vserial/vserial/agent"
	"github.com/vserial/vserial/pciscan"
)

// device is one virtio-console function brought up for the agent.
type device interface {
	// Ports delivers every port of the device as it appears: those present
	// at start and those hot-plugged later. A port hot-unplugged reports it
	// through its own Removed/Changed; the same id plugged again arrives
	// here as a new Port. The channel is closed when the device stops
	// (Close, or a failure that Err then describes).
	Ports() <-chan agent.Port
	// Err says why the device stopped, once Ports is closed; nil after Close.
	Err() error
	// Close resets the device, releases its memory and interrupt, gives
	// the function back to the driver it had before, and closes Ports.
	Close() error
}

// deviceSpec is what opening one function needs.
type deviceSpec struct {
	Index    int // device index, the D of vport<D>p<P> socket names
	Function pciscan.Function
	// Explicit is set when the operator named the function with --device:
	// the opener may then take it from a kernel driver that holds it.
	Explicit bool
	Bind     string // bindUIO
	MaxPorts int    // 0: as many as the device offers
	Sysfs    string
	Logger   *slog.Logger
}

// deviceOpener brings one function up. realMain takes it as a parameter so
// tests run the whole command against fake devices.
type deviceOpener func(ctx context.Context, spec deviceSpec) (device, error)

// errNotWired is what run reports until the integrator fills openDevice.
var errNotWired = errors.New("opening devices is not wired up yet (TODO(integrator): openDevice in cmd/vserial-agent/wiring.go)")

// openDevice is the production deviceOpener.
//
// TODO(integrator): wire the packages that are being written in parallel:
//  1. load uio_pci_generic if !pciscan.DriverRegistered(spec.Sysfs, "uio_pci_generic")
//     (modprobe; pciscan does not load modules);
//  2. prev, err := pciscan.Take(spec.Sysfs, spec.Function.Addr, "uio_pci_generic", spec.Explicit)
//     (Bind when !Explicit) and remember prev for pciscan.Restore in Close;
//  3. fn, err := uio.Open(...) for the bound function (config space, BARs, INTx, DMA allocator);
//  4. dev, err := driver.Open(ctx, fn, driver options{MaxPorts: spec.MaxPorts, Logger: spec.Logger});
//  5. return a device whose Ports() adapts every *driver.Port to agent.Port
//     (PortStats converted field by field; driver must not import agent) as
//     the driver reports ports added, and whose Close closes dev, then fn,
//     then restores prev. Use a cleanup stack so a failure in step k undoes
//     steps 1..k-1.
func openDevice(ctx context.Context, spec deviceSpec) (device, error) {
	return nil, errNotWired
}
