// Package uio opens a PCI function bound to uio_pci_generic for a userspace
// driver (Open: INTx, physical addresses; docs/operating.md#bindings), and
// holds the pieces every binding shares: configuration space (Config),
// width-exact BAR access (BAR, BARs), the DMA allocator over a PageSource,
// the physical page sources (hugepages, small pages), the sysfs resource
// file, and the confidential-guest and page-migration checks. Package vfio
// builds the vfio-pci binding from the same pieces.
//
// Its caller is internal/devopen, which binds the function first (package
// pciscan) and adapts a Function to package driver's Function interface;
// uio imports neither driver nor vfio. Every path (sysfs root, /dev,
// /proc/self/pagemap, /proc/sys, /proc/cpuinfo) is a parameter or an
// Options field, so tests run without root against files in a temporary
// directory.
//
// # What it promises
//
//   - Open takes a function that is already bound (ErrNotBound otherwise),
//     and leaves it with memory and I/O decoding and Bus Master on.
//   - Config and BAR accesses are width-exact: one access of exactly the
//     named width reaches the device (bar_unsafe.go; the instructions are
//     checked by TestMMIOAccessorsAreSingleMoves). A BAR access that faults
//     because the function went away returns ErrGone, never SIGBUS.
//   - IRQ.Wait waits in Go's poller; a cancelled context or Close unblocks
//     it.
//   - The Allocator hands out zeroed, locked memory with the address the
//     device must use. Under uio that is a physical address: the device can
//     reach any memory, so confidential guests are refused
//     (ErrConfidential).
//   - Close is idempotent and releases everything Open acquired: mappings,
//     DMA memory, descriptors. The caller resets the device before it.
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
//   - Bind, unbind or load modules (pciscan and internal/devopen do).
//   - Use write-combined BAR mappings.
//
// The step-by-step account of the binding sits at the top of uio.go.
package uio
