// Package vfio opens a PCI function bound to vfio-pci for a userspace
// driver (Open; docs/operating.md#bindings): behind an IOMMU (type1: the
// device reaches only memory mapped for it, at IOVAs this package chooses)
// or in no-IOMMU mode (/dev/vfio/noiommu-N: physical addresses as with uio,
// but MSI-X interrupts). Configuration space, BARs and the DMA allocator are
// package uio's shared pieces; this package adds the VFIO container, group
// and device flow, MSI-X through eventfds, IOMMU-mapped DMA chunks, and the
// request interrupt by which the kernel asks for the device back.
//
// Its caller is internal/devopen, which binds the function first (package
// pciscan) and adapts a Function to package driver's Function interface;
// vfio does not import driver. Paths are parameters, and the ioctls go
// through one function value, so tests run without root against a fake
// kernel side (vfio_test.go).
//
// # What it promises
//
//   - Open takes a function that is already bound (ErrNotBound otherwise),
//     and leaves it with memory and I/O decoding and Bus Master on. It
//     refuses an IOMMU group that another driver shares (ErrGroupShared,
//     naming the member), because VFIO gives a whole group to one user.
//   - MSIX.WaitVectors says which vectors fired, so the driver services only
//     their queues; a cancelled context or Close unblocks it.
//   - On type1 the device reaches nothing but the DMA chunks, with unmapped
//     guard gaps between them (UnmappedIOVA names one). In no-IOMMU mode
//     confidential guests are refused as with uio (uio.ErrConfidential).
//   - Requested is closed when the kernel wants the device back (unplug,
//     unbind); the owner then closes the function.
//   - Close is idempotent and releases everything Open acquired: MSI-X,
//     BARs, DMA memory (from the IOMMU first), descriptors. The caller
//     resets the device before it.
//
// # What it never does
//
//   - Issue a generic ioctl: each VFIO request is a typed call through one
//     chokepoint (ioctl.go, ioctl_unsafe.go), with the ABI as data in
//     vfio/internal/vfioabi.
//   - Use INTx through VFIO.
//
// The step-by-step account of the binding sits at the top of vfio.go.
package vfio
