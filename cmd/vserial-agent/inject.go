package main

import (
	"github.com/vserial/vserial/driver"
)

// faultInjector is a device that can commit a driver.Fault on purpose. Only
// binaries built with -tags faultinject (the guest tests' agent) use it;
// see inject_on.go.
type faultInjector interface {
	InjectFault(port uint32, f driver.Fault, addr uint64) error
	Stats() driver.DeviceStats
	// UnmappedAddr is a device address the IOMMU was never told to map
	// (ok false without an IOMMU).
	UnmappedAddr() (addr uint64, ok bool)
}

func (d *consoleDevice) InjectFault(port uint32, f driver.Fault, addr uint64) error {
	return d.dev.InjectFault(port, f, addr)
}

func (d *consoleDevice) Stats() driver.DeviceStats { return d.dev.Stats() }

func (d *consoleDevice) UnmappedAddr() (uint64, bool) {
	if d.unmapped == nil {
		return 0, false
	}
	return d.unmapped()
}

// maxResets is driver.Config.MaxResets for every device (0: the driver's
// default, 5 a minute). Only faultinject builds change it.
var maxResets int

var _ faultInjector = (*consoleDevice)(nil)
