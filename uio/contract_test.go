package uio_test

// Package uio must not import driver (ARCHITECTURE.md), but cmd adapts its
// concrete types to driver's interfaces, so their method sets must match
// exactly. This external test package may import both; the layering test
// looks only at non-test imports.

import (
	"github.com/vserial/vserial/dma"
	"github.com/vserial/vserial/driver"
	"github.com/vserial/vserial/uio"
)

var (
	_ driver.ConfigSpace = (*uio.Config)(nil)
	_ driver.BAR         = (*uio.BAR)(nil)
	_ driver.IRQ         = (*uio.IRQ)(nil)
	_ dma.Allocator      = (*uio.Allocator)(nil)
	_ driver.Function    = adapter{}
)

// adapter is the whole of what cmd needs to turn a *uio.Function into a
// driver.Function.
type adapter struct{ f *uio.Function }

func (a adapter) Config() driver.ConfigSpace { return a.f.Config() }
func (a adapter) BAR(i int) (driver.BAR, error) {
	b, err := a.f.BAR(i)
	if err != nil {
		return nil, err
	}
	return b, nil
}
func (a adapter) IRQ() driver.IRQ    { return a.f.IRQ() }
func (a adapter) DMA() dma.Allocator { return a.f.DMA() }
func (a adapter) IOMMU() bool        { return a.f.IOMMU() }
