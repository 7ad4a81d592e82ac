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
	"sort"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/vserial/vserial/dma"
	"github.com/vserial/vserial/internal/guard"
	"github.com/vserial/vserial/pciscan"
	"github.com/vserial/vserial/uio"
	"github.com/vserial/vserial/vfio/internal/vfioabi"
)

// Driver is the kernel driver a function must be bound to for Open.
const Driver = "vfio-pci"

// maxVectors is the most MSI-X vectors Open routes: the driver puts
// configuration changes and control on vector 0 and spreads the ports'
// data queues over the others (QEMU's default is vectors=2: all data on
// vector 1). Each routed vector costs an eventfd and a host interrupt, so
// the count is capped; more ports share vectors.
const maxVectors = 16

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

// configFile is configuration space as the VFIO config region: pread
// and pwrite of exactly the asked length at the region's offset in the
// device fd (vfio-pci virtualizes parts of it, VIRTIO-NOTES §8.3).
type configFile struct {
	fd         int
	base, size int64
}

func (c configFile) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off > c.size-int64(len(p)) {
		return 0, fmt.Errorf("%w: %d bytes at %#x (config region is %#x bytes)", uio.ErrBadAccess, len(p), off, c.size)
	}
	n, err := unix.Pread(c.fd, p, c.base+off)
	if err == nil && n != len(p) {
		err = fmt.Errorf("short read: %d of %d bytes", n, len(p))
	}
	return n, err
}

func (c configFile) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off > c.size-int64(len(p)) {
		return 0, fmt.Errorf("%w: %d bytes at %#x (config region is %#x bytes)", uio.ErrBadAccess, len(p), off, c.size)
	}
	n, err := unix.Pwrite(c.fd, p, c.base+off)
	if err == nil && n != len(p) {
		err = fmt.Errorf("short write: %d of %d bytes", n, len(p))
	}
	return n, err
}

// Close does nothing: the device fd belongs to the Function.
func (configFile) Close() error { return nil }

// GroupMember is one function of an IOMMU group as sysfs describes it.
type GroupMember struct {
	Addr   string
	Driver string // "" when unbound
	Class  uint32
}

// ReadGroup lists the functions of IOMMU group group
// (SYSFS/kernel/iommu_groups/GROUP/devices).
func ReadGroup(sysfs, group string) ([]GroupMember, error) {
	if group == "" || strings.ContainsAny(group, "/\x00") || group == "." || group == ".." {
		return nil, fmt.Errorf("malformed IOMMU group %q", group)
	}
	dir := filepath.Join(sysfs, "kernel", "iommu_groups", group, "devices")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []GroupMember
	for _, e := range ents {
		f, err := pciscan.Lookup(sysfs, e.Name())
		if err != nil {
			return nil, fmt.Errorf("IOMMU group %s: %w", group, err)
		}
		out = append(out, GroupMember{Addr: f.Addr, Driver: f.Driver, Class: f.Class})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Addr < out[j].Addr })
	return out, nil
}

// CheckGroup decides whether the function at addr may be used through its
// IOMMU group: VFIO hands the whole group to one user, and every device in
// it shares one IOMMU mapping. Besides addr, the group may only hold PCI
// bridges (vfio-pci ignores them) and functions that no driver holds or
// that are bound to vfio-pci too (we own them for as long as the group is
// open; nothing else can use them). A function held by any other driver is
// refused with an error naming it.
func CheckGroup(addr, group string, members []GroupMember) error {
	found := false
	var bad []string
	for _, m := range members {
		switch {
		case m.Addr == addr:
			found = true
		case m.Class>>8 == 0x0604: // PCI-to-PCI bridge
		case m.Driver == "" || m.Driver == Driver:
		default:
			bad = append(bad, fmt.Sprintf("%s (bound to %s)", m.Addr, m.Driver))
		}
	}
	if !found {
		return fmt.Errorf("IOMMU group %s does not list %s", group, addr)
	}
	if len(bad) > 0 {
		return fmt.Errorf("%w: IOMMU group %s also holds %s; VFIO gives a whole group to one user, so every other device in it must be unbound or bound to vfio-pci (or use --bind uio)",
			ErrGroupShared, group, strings.Join(bad, ", "))
	}
	return nil
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

// groupNode finds the group's character device: /dev/vfio/GROUP (behind an
// IOMMU) or /dev/vfio/noiommu-GROUP (no-IOMMU mode).
func groupNode(dev, group string) (node string, noIOMMU bool, err error) {
	p := filepath.Join(dev, "vfio", group)
	if _, err := os.Stat(p); err == nil {
		return p, false, nil
	}
	q := filepath.Join(dev, "vfio", "noiommu-"+group)
	if _, err := os.Stat(q); err == nil {
		return q, true, nil
	}
	return "", false, fmt.Errorf("%w: neither %s nor %s exists (is devtmpfs mounted on %s?)", ErrNoGroup, p, q, dev)
}

// attach runs the container/group flow of VIRTIO-NOTES §8.5/§8.6: open the
// container, check the API version and the IOMMU extension, open the group,
// check it is viable, put it in the container and set the IOMMU type.
func (f *Function) attach(dev, node string) error {
	cpath := filepath.Join(dev, "vfio", "vfio")
	fd, err := unix.Open(cpath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: cpath, Err: err}
	}
	f.container = fd
	v, err := f.sys.apiVersion(fd)
	if err != nil {
		return err
	}
	if v != vfioabi.APIVersion {
		return fmt.Errorf("VFIO API version %d, want %d", v, vfioabi.APIVersion)
	}
	typ := uintptr(vfioabi.Type1v2IOMMU)
	if f.noIOMMU {
		typ = vfioabi.NoIOMMU
		if ok, err := f.sys.checkExtension(fd, typ); err != nil || !ok {
			return fmt.Errorf("the VFIO container does not offer no-IOMMU mode (vfio loaded without enable_unsafe_noiommu_mode=1?): %v", err)
		}
	} else if ok, err := f.sys.checkExtension(fd, typ); err != nil || !ok {
		typ = vfioabi.Type1IOMMU
		if ok, err := f.sys.checkExtension(fd, typ); err != nil || !ok {
			return fmt.Errorf("the VFIO container offers no type1 IOMMU (vfio_iommu_type1 not loaded?): %v", err)
		}
	}
	gfd, err := unix.Open(node, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("open %s: the group is in use by another process (VFIO allows one user per group)", node)
		}
		if errors.Is(err, unix.EPERM) && f.noIOMMU {
			return fmt.Errorf("open %s: %w (no-IOMMU mode needs CAP_SYS_RAWIO)", node, err)
		}
		return &os.PathError{Op: "open", Path: node, Err: err}
	}
	f.groupFD = gfd
	st, err := f.sys.groupStatus(gfd)
	if err != nil {
		return err
	}
	if st.Flags&vfioabi.GroupFlagsViable == 0 {
		return fmt.Errorf("%w: IOMMU group %s is not viable: some device in it is bound to a driver other than vfio-pci", ErrGroupShared, f.group)
	}
	if err := f.sys.setContainer(gfd, f.container); err != nil {
		return err
	}
	if err := f.sys.setIOMMU(f.container, typ); err != nil {
		return err
	}
	return nil
}

// openDevice gets the device fd, checks it is a PCI device with the
// regions and interrupts vfio-pci has, and opens configuration space.
func (f *Function) openDevice() error {
	fd, err := f.sys.deviceFD(f.groupFD, f.addr)
	if err != nil {
		return err
	}
	f.devFD = fd
	info, err := f.sys.deviceInfo(fd)
	if err != nil {
		return err
	}
	if info.Flags&vfioabi.DeviceFlagsPCI == 0 || info.NumRegions <= vfioabi.PCIConfigRegion || info.NumIRQs <= vfioabi.PCIMSIXIRQ {
		return fmt.Errorf("not a vfio-pci device: flags %#x, %d regions, %d irqs", info.Flags, info.NumRegions, info.NumIRQs)
	}
	ri, _, err := f.sys.regionInfo(fd, vfioabi.PCIConfigRegion)
	if err != nil {
		return err
	}
	if ri.Size < 64 || ri.Size > 4096 || ri.Flags&(vfioabi.RegionFlagRead|vfioabi.RegionFlagWrite) != vfioabi.RegionFlagRead|vfioabi.RegionFlagWrite || ri.Offset > 1<<62 {
		return fmt.Errorf("config region: size %#x flags %#x offset %#x", ri.Size, ri.Flags, ri.Offset)
	}
	f.cfg = uio.NewConfig(configFile{fd: fd, base: int64(ri.Offset), size: int64(ri.Size)})
	return nil
}

// enableMSIX routes up to maxVectors MSI-X vectors to eventfds. This turns
// on the function's MSI-X enable bit, which must happen before the driver
// looks at the legacy register layout (its device config moves to offset
// 24). INTx through VFIO is not used: it was not delivered in our tests.
func (f *Function) enableMSIX() error {
	ii, err := f.sys.irqInfo(f.devFD, vfioabi.PCIMSIXIRQ)
	if err != nil {
		return err
	}
	if ii.Count == 0 {
		return fmt.Errorf("%w: the function has no MSI-X vectors (vserial drives VFIO functions through MSI-X only)", ErrNoMSIX)
	}
	if ii.Flags&vfioabi.IRQInfoEventfd == 0 {
		return fmt.Errorf("%w: MSI-X cannot signal eventfds (irq info flags %#x)", ErrNoMSIX, ii.Flags)
	}
	n := min(int(ii.Count), maxVectors)
	m, err := newMSIX(n)
	if err != nil {
		return err
	}
	f.irq = m
	return f.sys.setIRQs(f.devFD, vfioabi.PCIMSIXIRQ, 0, m.fds())
}

// enableRequest routes vfio-pci's request interrupt to an eventfd. The
// kernel signals it when it wants the device back — a hot-unplug (QMP
// device_del, PCIe removal) or an unbind — and waits for the device fd to
// be closed, repeating the request every few seconds ("Relaying device
// request to user"). Requested reports it; the owner then closes the
// function, which lets the removal finish. A kernel without the index
// (count 0) leaves Requested nil.
func (f *Function) enableRequest() error {
	ii, err := f.sys.irqInfo(f.devFD, vfioabi.PCIReqIRQ)
	if err != nil || ii.Count == 0 || ii.Flags&vfioabi.IRQInfoEventfd == 0 {
		f.log.Debug("vfio: no request interrupt; an unplug waits for the agent to exit", "addr", f.addr, "err", err)
		return nil
	}
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return fmt.Errorf("request eventfd: %w", err)
	}
	if err := f.sys.setIRQs(f.devFD, vfioabi.PCIReqIRQ, 0, []int32{int32(fd)}); err != nil {
		unix.Close(fd)
		return fmt.Errorf("request interrupt: %w", err)
	}
	f.req = os.NewFile(uintptr(fd), "vfio-request")
	f.requested = make(chan struct{})
	go f.awaitRequest(f.req, f.requested)
	return nil
}

// awaitRequest closes requested when the kernel signals the request
// eventfd; it ends without closing it when the eventfd is closed.
func (f *Function) awaitRequest(req *os.File, requested chan struct{}) {
	defer guard.Recover()
	var b [8]byte
	if n, err := req.Read(b[:]); err == nil && n == 8 {
		f.log.Warn("vfio: the kernel asks for the device back (unplug or unbind)", "addr", f.addr)
		close(requested)
	}
}

// Requested is closed when the kernel asks for the function back (it is
// being hot-unplugged or unbound): the owner must stop the device and
// Close the function, which lets the removal complete. Nil when the
// kernel offers no request interrupt.
func (f *Function) Requested() <-chan struct{} { return f.requested }

// setupDMA makes the allocator: IOMMU-mapped chunks on type1, physical
// addresses of hugepages (as uio) in no-IOMMU mode, or src if not nil. It
// maps the first chunk now so a problem shows at start-up.
func (f *Function) setupDMA(sysfs string, opts uio.Options, src uio.PageSource) error {
	if f.noIOMMU {
		uio.WarnMigration(sysfs, opts, f.log, "vfio no-IOMMU")
	}
	var fallback uio.PageSource
	switch {
	case src != nil:
	case f.noIOMMU:
		src, fallback = uio.PhysicalPages(sysfs, opts)
	default:
		var err error
		if f.iova, err = f.iovaWindow(); err != nil {
			return err
		}
		src = f.iova
	}
	f.alloc = uio.NewAllocator(src, fallback, f.log)
	return f.alloc.Prime()
}

// iovaWindow asks the IOMMU for its page sizes and usable IOVA ranges and
// returns a page source that maps chunks inside them.
func (f *Function) iovaWindow() (*iovaSource, error) {
	info, caps, err := f.sys.iommuInfo(f.container)
	if err != nil {
		return nil, err
	}
	if info.Flags&vfioabi.IOMMUInfoPgsizes != 0 && info.IOVAPgsizes&uint64(os.Getpagesize()) == 0 {
		return nil, fmt.Errorf("the IOMMU does not map %d-byte pages (page sizes %#x)", os.Getpagesize(), info.IOVAPgsizes)
	}
	var ranges []vfioabi.IOVARange
	if caps != nil {
		err := vfioabi.Caps(caps, info.CapOffset, vfioabi.SizeofIOMMUType1Info, func(id, _ uint16, body []byte) error {
			if id != vfioabi.IOMMUTypeCapIOVARange {
				return nil
			}
			var err error
			ranges, err = vfioabi.ParseIOVARanges(body)
			return err
		})
		if err != nil {
			return nil, err
		}
	}
	start, end, err := pickIOVA(ranges, 64*iovaChunk)
	if err != nil {
		return nil, err
	}
	f.log.Debug("vfio: iova window", "start", fmt.Sprintf("%#x", start), "end", fmt.Sprintf("%#x", end))
	return newIOVASource(f.sys, f.container, start, end), nil
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

func (f *Function) openBAR(i int) (*uio.BAR, error) {
	ri, caps, err := f.sys.regionInfo(f.devFD, uint32(i))
	if err != nil {
		return nil, err
	}
	if ri.Size == 0 {
		return nil, uio.ErrNoBAR
	}
	if ri.Offset > 1<<62 || ri.Size > 1<<40 {
		return nil, fmt.Errorf("region %d: offset %#x size %#x out of range", i, ri.Offset, ri.Size)
	}
	var res uio.Resource
	if i < len(f.res) {
		res = f.res[i]
	}
	whole := ri.Flags&vfioabi.RegionFlagMmap != 0
	if whole && caps != nil {
		err := vfioabi.Caps(caps, ri.CapOffset, vfioabi.SizeofRegionInfo, func(id, _ uint16, body []byte) error {
			if id != vfioabi.RegionCapSparseMmap {
				return nil
			}
			areas, err := vfioabi.ParseSparseMmap(body)
			if err != nil {
				return err
			}
			// Only a single area covering the region is mapped; other
			// layouts (the MSI-X table carved out) go through pread.
			whole = len(areas) == 1 && areas[0].Offset == 0 && areas[0].Size >= ri.Size
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	if whole {
		page := uint64(os.Getpagesize())
		n := (ri.Size + page - 1) &^ (page - 1)
		m, err := unix.Mmap(f.devFD, int64(ri.Offset), int(n), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err == nil {
			return uio.MappedBAR(i, res, ri.Size, m), nil
		}
		f.log.Warn("vfio: cannot map uio.BAR, using read/write", "bar", i, "err", err)
	}
	if ri.Flags&(vfioabi.RegionFlagRead|vfioabi.RegionFlagWrite) != vfioabi.RegionFlagRead|vfioabi.RegionFlagWrite {
		return nil, fmt.Errorf("region %d is neither mappable nor readable and writable (flags %#x)", i, ri.Flags)
	}
	return uio.FileBAR(i, res, ri.Size, f.devFD, int64(ri.Offset)), nil
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
