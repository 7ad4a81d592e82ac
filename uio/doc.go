// Package uio opens a PCI function for a userspace driver: configuration
// space, BARs, interrupts and DMA memory. Two bindings are supported:
// uio_pci_generic (Open: INTx, physical addresses) and vfio-pci (OpenVFIO:
// MSI-X, and IOVAs behind an IOMMU or physical addresses in no-IOMMU mode).
//
// uio_pci_generic (Open, Function):
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
// vfio-pci (OpenVFIO, VFIOFunction; VIRTIO-NOTES §8):
//
//   - OpenVFIO(sysfs, dev, addr, opts) expects the function to be bound to
//     vfio-pci already. It reads the IOMMU group from sysfs and uses
//     /dev/vfio/GROUP (type1: an IOMMU translates the device's addresses)
//     or /dev/vfio/noiommu-GROUP (no-IOMMU mode: it does not). The group
//     must hold only this function, PCI bridges, and functions that are
//     unbound or bound to vfio-pci; any other member is refused
//     (ErrGroupShared) with its address and driver, because VFIO gives a
//     whole group to one user. It then runs the container/group flow (API
//     version, type1v2 or type1 or NOIOMMU extension, group viable, set
//     container, set IOMMU), gets the device fd and sets Memory Space, I/O
//     Space and Bus Master through the config region (vfio-pci leaves Bus
//     Master to the user).
//   - Config is the VFIO config region, read and written with one pread or
//     pwrite of exactly the requested length on the device fd.
//   - BAR(i) maps the region from the device fd when VFIO allows mmap of
//     all of it, and otherwise (I/O-port BARs; a sparse mmap that carves
//     out the MSI-X table) accesses it with width-exact pread/pwrite on
//     the device fd, which vfio-pci performs as one access of that width.
//   - IRQ is MSI-X: min(vectors, 16) vectors, each signalling its own
//     eventfd (VFIO_DEVICE_SET_IRQS, DATA_EVENTFD|ACTION_TRIGGER), enabled
//     at open time so the driver sees the MSI-X enable bit (the legacy
//     device config moves to offset 24). Wait sleeps in the Go poller on an
//     epoll set of the eventfds and drains them all; WaitVectors also
//     returns which vectors had fired (driver.VectorIRQ), so the driver
//     services only their queues. Unmask is a no-op. INTx through VFIO is
//     not used.
//   - DMA on type1 is ordinary anonymous memory in 2 MiB chunks, each
//     mapped with VFIO_IOMMU_MAP_DMA at an IOVA we choose (from 4 GiB up,
//     inside the IOVA ranges the kernel reports) and unmapped on Close; the
//     device can reach nothing else, and IOMMU is true (the driver then
//     accepts VIRTIO_F_ACCESS_PLATFORM). Chunks sit 4 MiB apart: the 2 MiB
//     after each one is a guard gap that is never mapped, so an overrun
//     faults in the IOMMU. UnmappedIOVA returns the first gap, an address
//     guaranteed never to be mapped while the function is open (for tests
//     that check the IOMMU stops a stray DMA). On every binding the
//     allocator keeps an area of at most 4 KiB inside one 4 KiB page:
//     QEMU 7.2 behind a vIOMMU mistranslates a ring access that crosses a
//     page (a used-ring write faulted at IOVA 0x48, the offset into the
//     ring, in the IOMMU guest tests). In no-IOMMU mode DMA memory is the
//     hugepage allocator of the uio binding (physical addresses), IOMMU is
//     false, and confidential guests are refused as with uio.
//   - Close clears Bus Master, disables MSI-X, closes the eventfds, unmaps
//     BARs and DMA memory (IOMMU first, then the process), and closes the
//     device, group and container descriptors. It is idempotent.
//
// Paths (sysfs root, /dev, /proc/self/pagemap, /proc/sys, /proc/cpuinfo) are
// parameters or Options fields so tests run without root against files in a
// temporary directory.
package uio
