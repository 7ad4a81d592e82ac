// Package uio opens a PCI function for a userspace driver: configuration
// space, BARs, interrupts and DMA memory. It serves both bindings
// (docs/operating.md#bindings): uio_pci_generic (Open: INTx, physical
// addresses) and vfio-pci (OpenVFIO: MSI-X, and IOVAs behind an IOMMU or
// physical addresses in no-IOMMU mode).
//
// Its caller is cmd/vserial-agent, which binds the function first (package
// pciscan) and adapts a Function or VFIOFunction to package driver's
// Function interface; uio does not import driver. Every path (sysfs root,
// /dev, /proc/self/pagemap, /proc/sys, /proc/cpuinfo) is a parameter or an
// Options field, so tests run without root against files in a temporary
// directory.
//
// # What it promises
//
//   - Open and OpenVFIO take a function that is already bound
//     (ErrNotBound, ErrNotBoundVFIO otherwise), and leave it with memory and
//     I/O decoding and Bus Master on. OpenVFIO refuses an IOMMU group that
//     another driver shares (ErrGroupShared, naming the member).
//   - Config and BAR accesses are width-exact: one access of exactly the
//     named width reaches the device (bar_unsafe.go; the instructions are
//     checked by TestMMIOAccessorsAreSingleMoves). A BAR access that faults
//     because the function went away returns ErrGone, never SIGBUS.
//   - IRQ.Wait waits in Go's poller; a cancelled context or Close unblocks
//     it. With VFIO, WaitVectors also says which MSI-X vectors fired.
//   - DMA hands out zeroed, locked memory with the address the device must
//     use, and IOMMU says what that address is: an IOVA the IOMMU checks
//     (VFIO type1: the device reaches nothing else, with unmapped guard gaps
//     between chunks), or a physical address (uio, no-IOMMU: the device can
//     reach any memory; confidential guests are refused, ErrConfidential).
//   - Close is idempotent and releases everything Open acquired: mappings,
//     DMA memory (from the IOMMU first), eventfds and descriptors. The caller
//     resets the device before it.
//   - Failures wrap the sentinels in errors.go (match them with errors.Is);
//     OpError names the operation and the address, and messages say what to
//     fix.
//
// # Who writes which memory
//
// The device writes only the DMA memory the driver hands it; uio never reads
// or writes it. BARs and configuration space are the device's registers:
// uio reads and writes them only when its caller asks.
//
// # What it never does
//
//   - Bind, unbind or load modules (pciscan and cmd do).
//   - Issue a generic ioctl: each VFIO request is a typed call through one
//     chokepoint (vfio_ioctl.go, vfio_unsafe.go), with the ABI as data in
//     uio/internal/vfioabi.
//   - Use INTx through VFIO, or write-combined BAR mappings.
//
// The step-by-step account of each binding sits at the top of uio.go
// (uio_pci_generic) and vfio.go (vfio-pci).
package uio
