// Package drivertest helps tests outside package driver run a driver on
// the fake function of driver/virtiotest.
package drivertest

import (
	"github.com/vserial/vserial/dma"
	"github.com/vserial/vserial/driver"
	"github.com/vserial/vserial/driver/virtiotest"
)

// Function adapts a fake function to driver.Function.
func Function(f *virtiotest.Function) driver.Function { return fn{f} }

type fn struct{ f *virtiotest.Function }

func (a fn) Config() driver.ConfigSpace { return a.f.Config() }
func (a fn) BAR(i int) (driver.BAR, error) {
	b, err := a.f.BAR(i)
	if err != nil {
		return nil, err
	}
	return b, nil
}
func (a fn) IRQ() driver.IRQ    { return a.f.IRQ() }
func (a fn) DMA() dma.Allocator { return a.f.DMA() }
func (a fn) IOMMU() bool        { return a.f.IOMMU() }
