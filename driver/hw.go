package driver

// The small interfaces through which the driver reaches hardware. Package
// uio's types have the same method sets (cmd/vserial-agent adapts them), and
// the fake PCI function in driver/virtiotest implements them for tests.

import (
	"context"

	"github.com/vserial/vserial/dma"
)

// ConfigSpace is PCI configuration space, read and written at byte offsets.
// Implementations perform accesses of exactly len(p) bytes when len(p) is 1,
// 2 or 4 and off is aligned to it.
type ConfigSpace interface {
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
}

// BAR is one base address region. Every call is exactly one device access
// of the named width at off (which must be aligned to the width). Values are
// little-endian as on the PCI bus.
type BAR interface {
	Len() uint64
	Read8(off uint64) (uint8, error)
	Read16(off uint64) (uint16, error)
	Read32(off uint64) (uint32, error)
	Write8(off uint64, v uint8) error
	Write16(off uint64, v uint16) error
	Write32(off uint64, v uint32) error
}

// IRQ is the function's interrupt source as the driver sees it.
type IRQ interface {
	// MSIXVectors is the number of MSI-X vectors routed to this IRQ source;
	// 0 means INTx, in which case the driver reads the ISR after each wakeup.
	MSIXVectors() int
	// Wait blocks until at least one interrupt has fired since the previous
	// Wait returned, or until ctx is done (returning ctx.Err()) or the IRQ
	// is closed (returning an error matching net.ErrClosed or os.ErrClosed).
	// It must not busy-poll: implementations wait in the Go poller.
	Wait(ctx context.Context) error
	// Unmask re-arms the interrupt after the driver has serviced it
	// (uio_pci_generic: clear INTx Disable in the command register). It is
	// a no-op where the hardware needs nothing.
	Unmask() error
}

// VectorIRQ is implemented by an IRQ that can tell which MSI-X vectors
// fired. With it the event loop services only the queues on those vectors
// (and reads the device status only when the configuration vector fired);
// without it every wake-up services everything.
type VectorIRQ interface {
	IRQ
	// WaitVectors is Wait that returns the vectors that fired since the
	// previous return: bit v for vector v, bit 63 for any vector ≥ 63. The
	// set may be empty (a vector seen by an earlier call that also
	// re-armed the wake-up); no vector that fired is ever left out.
	WaitVectors(ctx context.Context) (uint64, error)
}

// Function is a PCI function that has been opened for the driver.
type Function interface {
	Config() ConfigSpace
	// BAR returns region i (0..5), or an error if it is absent or cannot be
	// accessed.
	BAR(i int) (BAR, error)
	IRQ() IRQ
	// DMA returns the allocator for device-visible memory.
	DMA() dma.Allocator
	// IOMMU reports whether the device's addresses go through an IOMMU
	// (VFIO type1), in which case VIRTIO_F_ACCESS_PLATFORM must be accepted.
	IOMMU() bool
}
