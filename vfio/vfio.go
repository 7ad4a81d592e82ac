package vfio

// The vfio-pci binding (Open, Function; VIRTIO-NOTES §8), step by
// step.
//
//   - Open(sysfs, dev, addr, opts) expects the function to be bound to
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
//     false, and confidential guests are refused as with
//   - Close clears Bus Master, disables MSI-X, closes the eventfds, unmaps
//     BARs and DMA memory (IOMMU first, then the process), and closes the
//     device, group and container descriptors. It is idempotent.

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/vserial/vserial/dma"
	"github.com/vserial/vserial/uio"
	"github.com/vserial/vserial/vfio/internal/vfioabi"
)

// Driver is the kernel driver a function must be bound to for Open.
const Driver = "vfio-pci"

// Function is a PCI function opened through vfio-pci, either behind an
// IOMMU (type1: the device reaches only memory we mapped, at IOVAs we
// chose) or in no-IOMMU mode (/dev/vfio/noiommu-N: physical addresses as
// with uio, but MSI-X interrupts). Its method set matches driver.Function
// with concrete types; cmd adapts it.
type Function struct {
	addr    string
	group   string
	noIOMMU bool
	log     *slog.Logger
	sys     vfioSys

	container, groupFD, devFD int
	cfg                       *uio.Config
	irq                       *MSIX
	req                       *os.File      // the request eventfd, nil if the kernel has none
	requested                 chan struct{} // closed when the kernel asks for the device back
	alloc                     *uio.Allocator
	iova                      *iovaSource // the allocator's source on type1, nil otherwise
	res                       []uio.Resource

	mu     sync.Mutex
	bars   uio.BARs
	closed bool
}

// Open opens the function at addr, which must already be bound to
// vfio-pci (package pciscan does that). sysfs is the sysfs root ("/sys"),
// dev the device directory ("/dev"). It picks type1 when /dev/vfio/GROUP
// exists and no-IOMMU mode when /dev/vfio/noiommu-GROUP does. See the
// package documentation for what it sets up.
func Open(sysfs, dev, addr string, opts uio.Options) (*Function, error) {
	return openWith(sysfs, dev, addr, opts, vfioSys{ioctl: rawIoctl}, nil)
}

// openWith is Open with the ioctls sys and, unless nil, the page source
// src (tests pass fakes of both).
func openWith(sysfs, dev, addr string, opts uio.Options, sys vfioSys, src uio.PageSource) (_ *Function, err error) {
	fail := func(err error) (*Function, error) {
		return nil, &OpError{Op: "open", Addr: addr, Err: err}
	}
	dir, log, err := uio.CheckFunction(sysfs, addr, opts)
	if err != nil {
		return fail(err)
	}
	if t, err := os.Readlink(filepath.Join(dir, "driver")); err != nil || filepath.Base(t) != Driver {
		drv := "no driver"
		if err == nil {
			drv = filepath.Base(t)
		}
		return fail(fmt.Errorf("%w (held by %s)", ErrNotBound, drv))
	}
	gl, err := os.Readlink(filepath.Join(dir, "iommu_group"))
	if err != nil {
		return fail(fmt.Errorf("%w: %s has no iommu_group (boot with an IOMMU enabled, e.g. intel_iommu=on, or load vfio with enable_unsafe_noiommu_mode=1)", ErrNoGroup, dir))
	}
	group := filepath.Base(gl)
	node, noIOMMU, err := groupNode(dev, group)
	if err != nil {
		return fail(err)
	}
	if noIOMMU && !opts.IgnoreConfidential {
		if err := uio.RefuseConfidential(opts, dev, log); err != nil {
			return fail(err)
		}
	}
	members, err := ReadGroup(sysfs, group)
	if err != nil {
		return fail(err)
	}
	if err := CheckGroup(addr, group, members); err != nil {
		return fail(err)
	}

	f := &Function{addr: addr, group: group, noIOMMU: noIOMMU, log: log, sys: sys, container: -1, groupFD: -1, devFD: -1}
	defer func() {
		if err != nil {
			f.release()
		}
	}()
	if err := f.attach(dev, node); err != nil {
		return fail(err)
	}
	if err := f.openDevice(); err != nil {
		return fail(err)
	}
	if f.res, err = uio.ReadResources(dir); err != nil {
		return fail(err)
	}
	if err := f.cfg.Enable(); err != nil {
		return fail(fmt.Errorf("set Bus Master: %w", err))
	}
	if err := f.enableMSIX(); err != nil {
		return fail(err)
	}
	if err := f.enableRequest(); err != nil {
		return fail(err)
	}
	if err := f.setupDMA(sysfs, opts, src); err != nil {
		return fail(fmt.Errorf("dma memory: %w", err))
	}
	mode := "type1"
	if noIOMMU {
		mode = "noiommu"
	}
	log.Info("vfio: opened", "addr", addr, "group", node, "mode", mode, "msix_vectors", f.irq.MSIXVectors(), "dma", f.alloc.Describe())
	return f, nil
}

// Addr is the function's PCI address.
func (f *Function) Addr() string { return f.addr }

// UnmappedIOVA returns a device address that is guaranteed never to be
// mapped for as long as the function is open (type1 only; ok is false in
// no-IOMMU mode, where the device sees physical addresses): the 2 MiB guard
// gap after the first DMA chunk. A DMA the device makes to it faults in the
// IOMMU. Tests use it to check that the device cannot reach memory we did
// not give it.
func (f *Function) UnmappedIOVA() (iova uint64, ok bool) {
	if f.iova != nil {
		return f.iova.guard(), true
	}
	return 0, false
}

// Group is the IOMMU group's number.
func (f *Function) Group() string { return f.group }

// NoIOMMU reports no-IOMMU mode (physical addresses).
func (f *Function) NoIOMMU() bool { return f.noIOMMU }

// Config returns configuration space (the VFIO config region).
func (f *Function) Config() *uio.Config { return f.cfg }

// IRQ returns the MSI-X vectors.
func (f *Function) IRQ() *MSIX { return f.irq }

// DMA returns the allocator of device-visible memory.
func (f *Function) DMA() dma.Allocator { return f.alloc }

// Allocator is DMA with its concrete type, for statistics.
func (f *Function) Allocator() *uio.Allocator { return f.alloc }

// IOMMU reports whether device addresses go through an IOMMU: true on
// type1, false in no-IOMMU mode.
func (f *Function) IOMMU() bool { return !f.noIOMMU }

// BAR returns region i (0-5): mapped from the device fd when VFIO allows
// mmap of the whole region, accessed with width-exact pread/pwrite on the
// device fd otherwise (I/O-port BARs, regions with a sparse mmap).
func (f *Function) BAR(i int) (*uio.BAR, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.bars.Get(f.closed, f.addr, i, func() (*uio.BAR, error) { return f.openBAR(i) })
}

// Close releases everything Open acquired, in this order: Bus Master
// off (the device can no longer reach memory, even if it was not reset),
// MSI-X disabled and its eventfds closed (a blocked Wait returns
// os.ErrClosed), BARs unmapped, DMA memory unmapped from the IOMMU and the
// process, then the device, group and container descriptors closed (the
// kernel resets the function when the device fd closes if it can). The
// caller resets the virtio device first. Close is idempotent.
func (f *Function) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil
	}
	f.closed = true
	if err := f.release(); err != nil {
		return &OpError{Op: "close", Addr: f.addr, Err: err}
	}
	f.log.Info("vfio: closed", "addr", f.addr)
	return nil
}

// release undoes whatever part of Open succeeded.
func (f *Function) release() error {
	var errs []error
	if f.cfg != nil {
		errs = append(errs, f.cfg.DisableBusMaster())
	}
	if f.irq != nil {
		if f.devFD >= 0 {
			errs = append(errs, f.sys.setIRQs(f.devFD, vfioabi.PCIMSIXIRQ, 0, nil))
		}
		errs = append(errs, f.irq.close())
	}
	if f.req != nil {
		if f.devFD >= 0 {
			errs = append(errs, f.sys.setIRQs(f.devFD, vfioabi.PCIReqIRQ, 0, nil))
		}
		errs = append(errs, f.req.Close())
		f.req = nil
	}
	errs = append(errs, f.bars.Close())
	if f.alloc != nil {
		errs = append(errs, f.alloc.Close())
	}
	for _, fd := range []*int{&f.devFD, &f.groupFD, &f.container} {
		if *fd >= 0 {
			errs = append(errs, unix.Close(*fd))
			*fd = -1
		}
	}
	return errors.Join(errs...)
}
