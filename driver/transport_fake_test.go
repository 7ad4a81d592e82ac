package driver

import (
	"testing"

	"github.com/vserial/vserial/dma"
	"github.com/vserial/vserial/driver/virtiotest"
)

// fakeFunction adapts *virtiotest.Function to Function. virtiotest cannot
// import this package (these tests import it), so its methods return its
// own concrete types; this adapter is the only glue.
type fakeFunction struct{ f *virtiotest.Function }

var _ Function = fakeFunction{}

func (a fakeFunction) Config() ConfigSpace { return a.f.Config() }

func (a fakeFunction) BAR(i int) (BAR, error) {
	b, err := a.f.BAR(i)
	if err != nil {
		return nil, err // not a typed nil in the interface
	}
	return b, nil
}

func (a fakeFunction) IRQ() IRQ           { return a.f.IRQ() }
func (a fakeFunction) DMA() dma.Allocator { return a.f.DMA() }
func (a fakeFunction) IOMMU() bool        { return a.f.IOMMU() }

// newFake builds a fake function around m; it is closed when the test ends,
// and the test fails if the driver made an access QEMU would mishandle.
func newFake(t testing.TB, m virtiotest.Model, opts virtiotest.Options) (*virtiotest.Function, Function) {
	t.Helper()
	f, err := virtiotest.New(m, opts)
	if err != nil {
		t.Fatalf("virtiotest.New: %v", err)
	}
	t.Cleanup(func() {
		for _, v := range f.Violations() {
			t.Errorf("device saw: %v", v)
		}
		if err := f.Close(); err != nil {
			t.Errorf("close fake function: %v", err)
		}
	})
	return f, fakeFunction{f}
}
