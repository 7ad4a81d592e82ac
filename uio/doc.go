// Package uio opens a PCI function bound to uio_pci_generic for a userspace
// driver: configuration space, BARs, the INTx interrupt and DMA memory with
// known physical addresses.
//
// Contract (the method sets match package driver's Function, ConfigSpace,
// BAR and IRQ interfaces, to which cmd adapts them; uio does not import
// driver):
//
//   - Open(sysfs, dev, addr, opts) expects the function to be bound to
//     uio_pci_generic already (package pciscan does that) and fails with
//     ErrNotBound otherwise. It opens /dev/uioN non-blocking through the Go
//     poller and the sysfs config file, and sets Memory Space, I/O Space and
//     Bus Master in the command register while clearing Interrupt Disable.
//     uio_pci_generic enables decoding but never Bus Master, and closing the
//     last /dev/uioN descriptor clears Bus Master again (VIRTIO-NOTES §9.1).
//   - Config reads and writes configuration space with one pread/pwrite of
//     exactly the requested length; the kernel turns an aligned 1, 2 or 4
//     byte access into one config cycle of that width.
//   - BAR(i) maps a memory BAR (sysfs resourceN, MAP_SHARED, uncached, never
//     resourceN_wc) and accesses it with single loads and stores of exactly
//     the named width (bar_unsafe.go); an I/O BAR is accessed with pread and
//     pwrite of exactly 1, 2 or 4 bytes on resourceN, which the kernel turns
//     into one in/out instruction. Kind and size come from the sysfs resource
//     file. Values are little-endian; Open refuses big-endian hosts.
//   - IRQ is INTx only (MSIXVectors is 0). Wait reads the 4-byte interrupt
//     count from /dev/uioN in the poller; a cancelled context or Close
//     unblocks it. Unmask clears Interrupt Disable (command bit 10)
//     with one 16-bit write of the cached command register at offset 4,
//     never a byte write at offset 5 as VIRTIO-NOTES §9.3 suggests: QEMU
//     (7.2) ignores the INTx line on command writes that miss byte 4 and
//     would lose an interrupt raised while masked. The caller reads the
//     device's ISR between Wait and Unmask.
//   - DMA returns an allocator of zeroed, locked memory whose device
//     addresses are physical addresses: 2 MiB hugepages (physically
//     contiguous; their physical address comes from /proc/self/pagemap,
//     which needs CAP_SYS_ADMIN), sub-allocated so that no region crosses a
//     hugepage. With Options.AllowSmallPages it falls back to single locked
//     4 KiB pages when no hugepage can be had; see SmallPages for the caveat.
//   - IOMMU is false: the device sees guest-physical addresses, so a
//     misbehaving device can reach any memory. Open refuses confidential
//     guests (SEV, TDX), whose devices can reach only memory the kernel
//     shares (best-effort detection, see Confidential).
//   - Close is idempotent. The caller resets the device first; Close then
//     unmaps BARs, unmaps all DMA memory and closes the descriptors.
//
// Paths (sysfs root, /dev, /proc/self/pagemap, /proc/sys, /proc/cpuinfo) are
// parameters or Options fields so tests run without root against files in a
// temporary directory.
package uio
