package vfio

import (
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vserial/vserial/uio"
	"github.com/vserial/vserial/vfio/internal/vfioabi"
)

// fakeVFIO is the kernel side of VFIO for unit tests: a sysfs tree with the
// function bound to vfio-pci in IOMMU group 5, /dev/vfio/{vfio,5} as plain
// files, and an ioctl function that answers the requests the backend makes
// on those descriptors. The device fd it hands out is a plain file whose
// region i lives at offset i<<20, so config and BAR accesses land in it.
type fakeVFIO struct {
	t               testing.TB
	sysfs, dev, dir string
	regions         string // the device's region file
	opts            uio.Options
	src             *fakeSource
	version         int
	exts            map[uintptr]bool
	viable          bool
	msixCount       uint32
	sparseBAR4      bool
	iovaRanges      []vfioabi.IOVARange
	failReq         uint // a request that fails with EIO
	mu              sync.Mutex
	reqs            []string
	containerFD     int
	groupFD         int
	devFD           int
	iommuType       uintptr
	containerSet    bool
	maps            map[uint64]uint64 // iova → size
	irqFDs          []int32
	irqsDisabled    bool
	reqIRQ          bool  // offers the request interrupt (VFIO_PCI_REQ_IRQ_INDEX)
	reqFD           int32 // its eventfd once set, -1 after disabling
}

const regionShift = 20

func newFakeVFIO(t *testing.T, noIOMMU bool) *fakeVFIO {
	t.Helper()
	root := t.TempDir()
	fv := &fakeVFIO{
		t: t, sysfs: filepath.Join(root, "sys"), dev: filepath.Join(root, "dev"),
		version: 0, exts: map[uintptr]bool{vfioabi.Type1v2IOMMU: true, vfioabi.Type1IOMMU: true},
		viable: true, msixCount: 3, containerFD: -1, groupFD: -1, devFD: -1, maps: map[uint64]uint64{},
		iovaRanges: []vfioabi.IOVARange{{Start: 0, End: 0xfedfffff}, {Start: 0xfef00000, End: 1<<39 - 1}},
	}
	if noIOMMU {
		fv.exts = map[uintptr]bool{vfioabi.NoIOMMU: true}
	}
	fv.dir = filepath.Join(fv.sysfs, "bus", "pci", "devices", testAddr)
	groupDir := filepath.Join(fv.sysfs, "kernel", "iommu_groups", "5", "devices")
	for _, d := range []string{fv.dir, groupDir, filepath.Join(fv.dev, "vfio"), filepath.Join(fv.sysfs, "bus", "pci", "drivers", Driver)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	fv.addSysfsFunction(testAddr, Driver, "0x078000")
	if err := os.Symlink("../../../../kernel/iommu_groups/5", filepath.Join(fv.dir, "iommu_group")); err != nil {
		t.Fatal(err)
	}
	node := "5"
	if noIOMMU {
		node = "noiommu-5"
	}
	for _, n := range []string{"vfio", node} {
		if err := os.WriteFile(filepath.Join(fv.dev, "vfio", n), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(fv.dir, "resource"), []byte(qemuResources), 0o600); err != nil {
		t.Fatal(err)
	}
	// Regions: config (7) with a virtio-serial header, BAR0 0x40 bytes of
	// I/O, BAR4 16 KiB of memory.
	fv.regions = filepath.Join(root, "regions")
	cfg := make([]byte, 256)
	cfg[0], cfg[1], cfg[2], cfg[3] = 0xf4, 0x1a, 0x03, 0x10
	cfg[4], cfg[5] = 0x03, 0x04
	rf, err := os.Create(fv.regions)
	if err != nil {
		t.Fatal(err)
	}
	rf.WriteAt(cfg, 7<<regionShift)
	rf.Close()
	ci := filepath.Join(root, "cpuinfo")
	if err := os.WriteFile(ci, []byte("processor\t: 0\nflags\t\t: fpu hypervisor\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	fv.opts = uio.Options{CPUInfo: ci, Logger: quiet}
	if noIOMMU {
		fv.src = newFakeSource()
	}
	return fv
}

// addSysfsFunction adds a function to sysfs and to IOMMU group 5.
func (fv *fakeVFIO) addSysfsFunction(addr, driver, class string) {
	t := fv.t
	dir := filepath.Join(fv.sysfs, "bus", "pci", "devices", addr)
	os.MkdirAll(dir, 0o755)
	for name, v := range map[string]string{"vendor": "0x1af4", "device": "0x1003", "subsystem_vendor": "0x1af4",
		"subsystem_device": "0x0003", "revision": "0x00", "class": class} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if driver != "" {
		os.MkdirAll(filepath.Join(fv.sysfs, "bus", "pci", "drivers", driver), 0o755)
		if err := os.Symlink("../../../bus/pci/drivers/"+driver, filepath.Join(dir, "driver")); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("../../../../bus/pci/devices/"+addr, filepath.Join(fv.sysfs, "kernel", "iommu_groups", "5", "devices", addr)); err != nil {
		t.Fatal(err)
	}
}

func (fv *fakeVFIO) sys() vfioSys { return vfioSys{ioctl: fv.ioctl} }

func (fv *fakeVFIO) open() (*Function, error) {
	var src uio.PageSource // a nil *fakeSource would not be a nil interface
	if fv.src != nil {
		src = fv.src
	}
	return openWith(fv.sysfs, fv.dev, testAddr, fv.opts, fv.sys(), src)
}

// fdPath names what fd refers to, to tell container, group and device apart.
func fdPath(fd int) string {
	p, _ := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	return p
}

func (fv *fakeVFIO) ioctl(fd int, req uint, arg []byte, val uintptr) (int, error) {
	fv.mu.Lock()
	defer fv.mu.Unlock()
	name := map[uint]string{
		vfioabi.GetAPIVersion: "api", vfioabi.CheckExtension: "ext", vfioabi.SetIOMMU: "set-iommu",
		vfioabi.GroupGetStatus: "status", vfioabi.GroupSetContainer: "set-container", vfioabi.GroupGetDeviceFD: "device-fd",
		vfioabi.DeviceGetInfo: "device-info", vfioabi.DeviceGetRegion: "region", vfioabi.DeviceGetIRQInfo: "irq-info",
		vfioabi.DeviceSetIRQs: "set-irqs", vfioabi.IOMMUGetInfo: "iommu-info", vfioabi.IOMMUMapDMA: "map",
		vfioabi.IOMMUUnmapDMA: "unmap",
	}[req]
	fv.reqs = append(fv.reqs, name)
	if req == fv.failReq {
		return -1, unix.EIO
	}
	path := fdPath(fd)
	onContainer := strings.HasSuffix(path, "/vfio/vfio")
	onGroup := strings.HasSuffix(path, "/vfio/5") || strings.HasSuffix(path, "/vfio/noiommu-5")
	onDevice := path == fv.regions
	u32 := func(off int) uint32 { return ne.Uint32(arg[off:]) }
	put32 := func(off int, v uint32) { ne.PutUint32(arg[off:], v) }
	switch {
	case req == vfioabi.GetAPIVersion && onContainer:
		fv.containerFD = fd
		return fv.version, nil
	case req == vfioabi.CheckExtension && onContainer:
		if fv.exts[val] {
			return 1, nil
		}
		return 0, nil
	case req == vfioabi.GroupGetStatus && onGroup:
		fv.groupFD = fd
		if u32(0) != 8 {
			return -1, unix.EINVAL
		}
		var fl uint32
		if fv.viable {
			fl |= vfioabi.GroupFlagsViable
		}
		put32(4, fl)
		return 0, nil
	case req == vfioabi.GroupSetContainer && onGroup:
		if len(arg) != 4 || int(int32(u32(0))) != fv.containerFD {
			return -1, unix.EBADF
		}
		fv.containerSet = true
		return 0, nil
	case req == vfioabi.SetIOMMU && onContainer:
		if !fv.containerSet || !fv.exts[val] {
			return -1, unix.EINVAL
		}
		fv.iommuType = val
		return 0, nil
	case req == vfioabi.IOMMUGetInfo && onContainer:
		if fv.iommuType == vfioabi.NoIOMMU || fv.iommuType == 0 {
			return -1, unix.EINVAL
		}
		need := 24 + 16 + 16*len(fv.iovaRanges)
		put32(4, vfioabi.IOMMUInfoPgsizes|vfioabi.IOMMUInfoCaps)
		ne.PutUint64(arg[8:], 0x40201000)
		if int(u32(0)) < need {
			put32(0, uint32(need))
			put32(16, 0)
			return 0, nil
		}
		put32(16, 24)
		ne.PutUint16(arg[24:], vfioabi.IOMMUTypeCapIOVARange)
		ne.PutUint16(arg[26:], 1)
		put32(28, 0)
		put32(32, uint32(len(fv.iovaRanges)))
		for i, r := range fv.iovaRanges {
			ne.PutUint64(arg[40+16*i:], r.Start)
			ne.PutUint64(arg[48+16*i:], r.End)
		}
		return 0, nil
	case req == vfioabi.IOMMUMapDMA && onContainer:
		if fv.iommuType == vfioabi.NoIOMMU {
			return -1, unix.EINVAL
		}
		vaddr, iova, size := ne.Uint64(arg[8:]), ne.Uint64(arg[16:]), ne.Uint64(arg[24:])
		if u32(0) != 32 || u32(4) != 3 || vaddr%4096 != 0 || iova%4096 != 0 || size%4096 != 0 || size == 0 {
			return -1, unix.EINVAL
		}
		in := false
		for _, r := range fv.iovaRanges {
			in = in || (iova >= r.Start && iova+size-1 <= r.End)
		}
		if !in {
			return -1, unix.EINVAL
		}
		fv.maps[iova] = size
		return 0, nil
	case req == vfioabi.IOMMUUnmapDMA && onContainer:
		iova, size := ne.Uint64(arg[8:]), ne.Uint64(arg[16:])
		if fv.maps[iova] != size {
			ne.PutUint64(arg[16:], 0)
			return 0, nil
		}
		delete(fv.maps, iova)
		return 0, nil
	case req == vfioabi.GroupGetDeviceFD && onGroup:
		if string(arg) != testAddr+"\x00" {
			return -1, unix.ENODEV
		}
		dfd, err := unix.Open(fv.regions, unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return -1, err
		}
		fv.devFD = dfd
		return dfd, nil
	case req == vfioabi.DeviceGetInfo && onDevice:
		put32(4, vfioabi.DeviceFlagsPCI|vfioabi.DeviceFlagsReset)
		put32(8, 9)
		put32(12, 5)
		return 0, nil
	case req == vfioabi.DeviceGetRegion && onDevice:
		idx := u32(8)
		var flags uint32 = vfioabi.RegionFlagRead | vfioabi.RegionFlagWrite
		var size uint64
		switch idx {
		case 0:
			size = 0x40
		case 4:
			size = 0x4000
			flags |= vfioabi.RegionFlagMmap
			if fv.sparseBAR4 {
				flags |= vfioabi.RegionFlagCaps
				need := uint32(32 + 16 + 32)
				if u32(0) < need {
					put32(0, need)
					put32(4, flags)
					return 0, nil
				}
				put32(12, 32)
				ne.PutUint16(arg[32:], vfioabi.RegionCapSparseMmap)
				ne.PutUint16(arg[34:], 1)
				put32(36, 0)
				put32(40, 2)
				ne.PutUint64(arg[48:], 0)
				ne.PutUint64(arg[56:], 0x1000)
				ne.PutUint64(arg[64:], 0x2000)
				ne.PutUint64(arg[72:], 0x2000)
			}
		case 7:
			size = 256
		}
		put32(4, flags)
		ne.PutUint64(arg[16:], size)
		ne.PutUint64(arg[24:], uint64(idx)<<regionShift)
		return 0, nil
	case req == vfioabi.DeviceGetIRQInfo && onDevice:
		if u32(8) == vfioabi.PCIMSIXIRQ {
			put32(4, vfioabi.IRQInfoEventfd|vfioabi.IRQInfoNoresize)
			put32(12, fv.msixCount)
		}
		if u32(8) == vfioabi.PCIReqIRQ && fv.reqIRQ {
			put32(4, vfioabi.IRQInfoEventfd)
			put32(12, 1)
		}
		return 0, nil
	case req == vfioabi.DeviceSetIRQs && onDevice && u32(8) == vfioabi.PCIReqIRQ && fv.reqIRQ:
		switch {
		case u32(4) == vfioabi.IRQSetDataNone|vfioabi.IRQSetActionTrigger:
			fv.reqFD = -1
		case u32(4) == vfioabi.IRQSetDataEventfd|vfioabi.IRQSetActionTrigger && u32(16) == 1 && len(arg) == 24:
			fv.reqFD = int32(u32(20))
		default:
			return -1, unix.EINVAL
		}
		return 0, nil
	case req == vfioabi.DeviceSetIRQs && onDevice:
		if int(u32(0)) != len(arg) || u32(8) != vfioabi.PCIMSIXIRQ {
			return -1, unix.EINVAL
		}
		switch u32(4) {
		case vfioabi.IRQSetDataNone | vfioabi.IRQSetActionTrigger:
			fv.irqFDs, fv.irqsDisabled = nil, true
		case vfioabi.IRQSetDataEventfd | vfioabi.IRQSetActionTrigger:
			n := u32(16)
			if n > fv.msixCount || len(arg) != 20+4*int(n) {
				return -1, unix.EINVAL
			}
			fv.irqFDs = nil
			for i := 0; i < int(n); i++ {
				fv.irqFDs = append(fv.irqFDs, int32(u32(20+4*i)))
			}
		default:
			return -1, unix.EINVAL
		}
		return 0, nil
	}
	return -1, unix.ENOTTY
}

// fire plays the kernel's MSI-X handler: it signals vector v's eventfd.
func (fv *fakeVFIO) fire(t *testing.T, v int) {
	t.Helper()
	fv.mu.Lock()
	fd := fv.irqFDs[v]
	fv.mu.Unlock()
	var b [8]byte
	ne.PutUint64(b[:], 1)
	if _, err := unix.Write(int(fd), b[:]); err != nil {
		t.Fatal(err)
	}
}

func (fv *fakeVFIO) regionBytes(t *testing.T, idx int, off, n int64) []byte {
	t.Helper()
	f, err := os.Open(fv.regions)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	f.ReadAt(b, int64(idx)<<regionShift+off)
	return b
}

func TestVFIOOpenType1(t *testing.T) {
	fv := newFakeVFIO(t, false)
	fds := openFDs(t)
	f, err := fv.open()
	if err != nil {
		t.Fatal(err)
	}
	// The container/group flow in the order of VIRTIO-NOTES §8.5.
	// The second irq-info asks for the request interrupt (none here).
	want := []string{"api", "ext", "status", "set-container", "set-iommu", "device-fd", "device-info", "region", "irq-info", "set-irqs", "irq-info", "iommu-info", "iommu-info", "map"}
	if !slices.Equal(fv.reqs, want) {
		t.Errorf("requests %v, want %v", fv.reqs, want)
	}
	if fv.iommuType != vfioabi.Type1v2IOMMU || !f.IOMMU() || f.NoIOMMU() {
		t.Errorf("iommu type %d, IOMMU() %v", fv.iommuType, f.IOMMU())
	}
	// Config space goes through region 7; Open set Bus Master, memory
	// and I/O decoding and cleared INTx Disable.
	var id [4]byte
	if _, err := f.Config().ReadAt(id[:], 0); err != nil || binary.LittleEndian.Uint32(id[:]) != 0x10031af4 {
		t.Fatalf("config id %x, %v", id, err)
	}
	if cmd := binary.LittleEndian.Uint16(fv.regionBytes(t, 7, 4, 2)); cmd != 0x0007 {
		t.Errorf("command register %#04x, want 0x0007", cmd)
	}
	if _, err := f.Config().ReadAt(id[:], 254); err == nil {
		t.Error("config read past the region accepted")
	}
	// MSI-X: min(count, maxVectors) vectors routed: all three here.
	if n := f.IRQ().MSIXVectors(); n != 3 || len(fv.irqFDs) != 3 {
		t.Fatalf("%d vectors (%d routed), want 3", n, len(fv.irqFDs))
	}
	// BAR4 is mapped (stores reach the region file), BAR0 goes through
	// pwrite at the region offset.
	b4, err := f.BAR(4)
	if err != nil || b4.IO() {
		t.Fatalf("BAR4: %v (io %v)", err, b4 != nil && b4.IO())
	}
	if err := b4.Write32(0x14, 0xdeadbeef); err != nil {
		t.Fatal(err)
	}
	if v := ne.Uint32(fv.regionBytes(t, 4, 0x14, 4)); v != 0xdeadbeef {
		t.Errorf("BAR4 store landed as %#x", v)
	}
	b0, err := f.BAR(0)
	if err != nil || !b0.IO() {
		t.Fatalf("BAR0: %v", err)
	}
	if err := b0.Write16(0x10, 0x1234); err != nil {
		t.Fatal(err)
	}
	if v := ne.Uint16(fv.regionBytes(t, 0, 0x10, 2)); v != 0x1234 {
		t.Errorf("BAR0 write landed as %#x", v)
	}
	if _, err := b0.Read32(0x3e); !errors.Is(err, uio.ErrBadAccess) {
		t.Errorf("misaligned read: %v", err)
	}
	if _, err := f.BAR(2); !errors.Is(err, uio.ErrNoBAR) {
		t.Errorf("BAR2: %v, want uio.ErrNoBAR", err)
	}
	// DMA memory sits at IOMMU-mapped IOVAs above 4 GiB.
	r, err := f.DMA().Alloc(4096, 4096)
	if err != nil {
		t.Fatal(err)
	}
	if r.Addr() < 1<<32 || r.Addr()%4096 != 0 {
		t.Errorf("region at %#x, want a page-aligned IOVA above 4 GiB", r.Addr())
	}
	if size, ok := fv.maps[r.Addr()&^(iovaChunk-1)]; !ok || size != iovaChunk {
		t.Errorf("iova %#x is not inside a mapping: %x", r.Addr(), fv.maps)
	}
	r.Bytes()[0] = 1 // the memory is ours to write
	// A second chunk follows a guard gap that is never mapped, and
	// UnmappedIOVA names that gap.
	r2, err := f.DMA().Alloc(iovaChunk, 4096)
	if err != nil {
		t.Fatal(err)
	}
	first := r.Addr() &^ (iovaChunk - 1)
	if r2.Addr() != first+2*iovaChunk {
		t.Errorf("second chunk at %#x, want %#x (first %#x, then a 2 MiB guard gap)", r2.Addr(), first+2*iovaChunk, first)
	}
	guard, ok := f.UnmappedIOVA()
	if !ok || guard != first+iovaChunk {
		t.Errorf("UnmappedIOVA = %#x, %v; want %#x", guard, ok, first+iovaChunk)
	}
	for iova, size := range fv.maps {
		if guard+iovaChunk > iova && guard < iova+size {
			t.Errorf("guard IOVA %#x lies in the mapping %#x+%#x", guard, iova, size)
		}
	}

	// Interrupts: Wait sleeps until a vector fires, and drains it.
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	if err := f.IRQ().Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait with nothing fired: %v", err)
	}
	cancel()
	fv.fire(t, 1)
	fv.fire(t, 1)
	fv.fire(t, 0)
	if err := f.IRQ().Wait(t.Context()); err != nil {
		t.Fatal(err)
	}
	if c := f.IRQ().Counts(); c[0] != 1 || c[1] != 2 {
		t.Errorf("counts %v, want [1 2]", c)
	}
	ctx, cancel = context.WithTimeout(t.Context(), 50*time.Millisecond)
	if err := f.IRQ().Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait after draining: %v, want a timeout", err)
	}
	cancel()
	// WaitVectors names the vectors it drained.
	fv.fire(t, 2)
	fv.fire(t, 0)
	if got, err := f.IRQ().WaitVectors(t.Context()); err != nil || got != 1<<0|1<<2 {
		t.Errorf("WaitVectors = %#b, %v; want vectors 0 and 2", got, err)
	}
	if err := f.IRQ().Unmask(); err != nil {
		t.Fatal(err)
	}

	// Close wakes a blocked Wait, disables MSI-X, unmaps all DMA memory,
	// clears Bus Master and closes every descriptor.
	done := make(chan error, 1)
	go func() { done <- f.IRQ().Wait(context.Background()) }()
	time.Sleep(10 * time.Millisecond) // let it block (the test passes either way)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, os.ErrClosed) {
		t.Errorf("Wait after Close: %v, want os.ErrClosed", err)
	}
	if !fv.irqsDisabled || len(fv.maps) != 0 {
		t.Errorf("after Close: irqs disabled %v, mappings %x", fv.irqsDisabled, fv.maps)
	}
	if cmd := binary.LittleEndian.Uint16(fv.regionBytes(t, 7, 4, 2)); cmd&0x0004 != 0 { // Bus Master
		t.Errorf("Bus Master still set after Close: %#04x", cmd)
	}
	if n := openFDs(t); n != fds {
		t.Errorf("%d descriptors open after Close, %d before Open", n, fds)
	}
	if err := f.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := f.BAR(4); !errors.Is(err, uio.ErrClosed) {
		t.Errorf("uio.BAR after Close: %v", err)
	}
}

func TestVFIOOpenNoIOMMU(t *testing.T) {
	fv := newFakeVFIO(t, true)
	f, err := fv.open()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if fv.iommuType != vfioabi.NoIOMMU || f.IOMMU() || !f.NoIOMMU() {
		t.Errorf("iommu type %d, IOMMU() %v", fv.iommuType, f.IOMMU())
	}
	if slices.Contains(fv.reqs, "iommu-info") || slices.Contains(fv.reqs, "map") {
		t.Errorf("no-IOMMU mode issued type1 requests: %v", fv.reqs)
	}
	if f.IRQ().MSIXVectors() != 3 {
		t.Errorf("%d vectors, want 3", f.IRQ().MSIXVectors())
	}
	r, err := f.DMA().Alloc(64, 64)
	if err != nil {
		t.Fatal(err)
	}
	if r.Addr() < 0x4000_0000 || len(fv.src.out) != 1 {
		t.Errorf("DMA address %#x does not come from the physical page source", r.Addr())
	}
}

// TestVFIONoIOMMUConfidential: no-IOMMU mode gives the device physical
// addresses, which an SEV/TDX guest's device cannot reach.
func TestVFIONoIOMMUConfidential(t *testing.T) {
	fv := newFakeVFIO(t, true)
	os.WriteFile(fv.opts.CPUInfo, []byte("processor\t: 0\nflags\t\t: fpu hypervisor tdx_guest\n"), 0o644)
	if _, err := fv.open(); !errors.Is(err, uio.ErrConfidential) {
		t.Fatalf("open = %v, want uio.ErrConfidential", err)
	}
	// Type1 in the same guest is not refused for that reason.
	fv1 := newFakeVFIO(t, false)
	os.WriteFile(fv1.opts.CPUInfo, []byte("processor\t: 0\nflags\t\t: fpu hypervisor tdx_guest\n"), 0o644)
	f, err := fv1.open()
	if err != nil {
		t.Fatalf("type1 in a TDX guest: %v", err)
	}
	f.Close()
}

func TestVFIOSparseBARUsesReadWrite(t *testing.T) {
	fv := newFakeVFIO(t, false)
	fv.sparseBAR4 = true
	f, err := fv.open()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b, err := f.BAR(4)
	if err != nil {
		t.Fatal(err)
	}
	if !b.IO() {
		t.Fatal("BAR4 with a sparse mmap of two areas was mapped whole")
	}
	if err := b.Write32(0x1000, 7); err != nil {
		t.Fatal(err)
	}
	if v := ne.Uint32(fv.regionBytes(t, 4, 0x1000, 4)); v != 7 {
		t.Errorf("write landed as %d", v)
	}
}

func TestVFIOOpenErrors(t *testing.T) {
	for _, c := range []struct {
		name  string
		setup func(fv *fakeVFIO)
		is    error
		msg   string
	}{
		{"not bound", func(fv *fakeVFIO) {
			os.Remove(filepath.Join(fv.dir, "driver"))
			os.Symlink("../../../bus/pci/drivers/virtio-pci", filepath.Join(fv.dir, "driver"))
		}, ErrNotBound, "held by virtio-pci"},
		{"no iommu group", func(fv *fakeVFIO) { os.Remove(filepath.Join(fv.dir, "iommu_group")) }, ErrNoGroup, "intel_iommu=on"},
		{"no group node", func(fv *fakeVFIO) { os.Remove(filepath.Join(fv.dev, "vfio", "5")) }, ErrNoGroup, "noiommu-5"},
		{"group shared", func(fv *fakeVFIO) { fv.addSysfsFunction("0000:00:04.0", "e1000e", "0x020000") }, ErrGroupShared, "0000:00:04.0 (bound to e1000e)"},
		{"group not viable", func(fv *fakeVFIO) { fv.viable = false }, ErrGroupShared, "not viable"},
		{"api version", func(fv *fakeVFIO) { fv.version = 1 }, nil, "API version 1"},
		{"no type1", func(fv *fakeVFIO) { fv.exts = map[uintptr]bool{} }, nil, "no type1 IOMMU"},
		{"no msix", func(fv *fakeVFIO) { fv.msixCount = 0 }, ErrNoMSIX, "MSI-X only"},
		{"set irqs fails", func(fv *fakeVFIO) { fv.failReq = vfioabi.DeviceSetIRQs }, unix.EIO, "VFIO_DEVICE_SET_IRQS"},
		{"map fails", func(fv *fakeVFIO) { fv.failReq = vfioabi.IOMMUMapDMA }, unix.EIO, "map dma"},
		{"no iova space", func(fv *fakeVFIO) { fv.iovaRanges = []vfioabi.IOVARange{{Start: 0x1000, End: 0x1fffff}} }, nil, "no usable IOVA range"},
	} {
		t.Run(c.name, func(t *testing.T) {
			fv := newFakeVFIO(t, false)
			c.setup(fv)
			fds := openFDs(t)
			f, err := fv.open()
			if err == nil {
				f.Close()
				t.Fatal("open succeeded")
			}
			if c.is != nil && !errors.Is(err, c.is) {
				t.Errorf("error %v, want %v", err, c.is)
			}
			if !strings.Contains(err.Error(), c.msg) || !strings.HasPrefix(err.Error(), "vfio: open "+testAddr+": ") {
				t.Errorf("error %q, want it to start with the op and say %q", err, c.msg)
			}
			if n := openFDs(t); n != fds {
				t.Errorf("%d descriptors open after the failure, %d before", n, fds)
			}
			if len(fv.maps) != 0 {
				t.Errorf("DMA left mapped: %x", fv.maps)
			}
		})
	}
}

func TestCheckGroup(t *testing.T) {
	me := GroupMember{Addr: testAddr, Driver: Driver, Class: 0x078000}
	for _, c := range []struct {
		name    string
		members []GroupMember
		ok      bool
	}{
		{"alone", []GroupMember{me}, true},
		{"with a bridge", []GroupMember{{Addr: "0000:00:01.0", Driver: "pcieport", Class: 0x060400}, me}, true},
		{"with an unbound function", []GroupMember{me, {Addr: "0000:00:03.1", Class: 0x078000}}, true},
		{"with another vfio function", []GroupMember{me, {Addr: "0000:00:03.1", Driver: Driver}}, true},
		{"with a kernel-driven function", []GroupMember{me, {Addr: "0000:00:03.1", Driver: "virtio-pci", Class: 0x078000}}, false},
		{"without us", []GroupMember{{Addr: "0000:00:04.0"}}, false},
	} {
		err := CheckGroup(testAddr, "5", c.members)
		if (err == nil) != c.ok {
			t.Errorf("%s: %v, want ok=%v", c.name, err, c.ok)
		}
	}
}

func TestPickIOVA(t *testing.T) {
	x86 := []vfioabi.IOVARange{{Start: 0, End: 0xfedfffff}, {Start: 0xfef00000, End: 1<<39 - 1}}
	for _, c := range []struct {
		name       string
		ranges     []vfioabi.IOVARange
		start, end uint64
		fail       bool
	}{
		{"x86 vt-d", x86, 1 << 32, 1 << 39, false},
		{"none reported", nil, 1 << 32, 1 << 48, false},
		{"only low", []vfioabi.IOVARange{{Start: 0, End: 0xfedfffff}}, iovaChunk, 0xfee00000, false},
		{"unaligned", []vfioabi.IOVARange{{Start: 0x1000, End: 0x7fffff}}, iovaChunk, 0x800000, false},
		{"too small", []vfioabi.IOVARange{{Start: 0x1000, End: 0x1fffff}}, 0, 0, true},
	} {
		s, e, err := pickIOVA(c.ranges, 2*iovaChunk)
		if (err != nil) != c.fail || (!c.fail && (s != c.start || e != c.end)) {
			t.Errorf("%s: [%#x, %#x) %v, want [%#x, %#x) fail=%v", c.name, s, e, err, c.start, c.end, c.fail)
		}
	}
}

// TestVFIOIoctlEncoding checks the bytes each typed request hands the
// chokepoint against the C layout.
func TestVFIOIoctlEncoding(t *testing.T) {
	type call struct {
		req uint
		arg []byte
		val uintptr
	}
	var got []call
	sys := vfioSys{ioctl: func(fd int, req uint, arg []byte, val uintptr) (int, error) {
		got = append(got, call{req, slices.Clone(arg), val})
		return 0, nil
	}}
	sys.checkExtension(3, vfioabi.Type1v2IOMMU)
	sys.setContainer(4, 3)
	sys.mapDMA(3, 0x7f0000200000, 0x100000000, 0x200000)
	sys.unmapDMA(3, 0x100000000, 0x200000)
	sys.deviceFD(4, testAddr)
	w := func(vs ...uint64) []byte { // 32/64-bit words as given
		var b []byte
		for i := 0; i < len(vs); i += 2 {
			switch vs[i] {
			case 4:
				b = ne.AppendUint32(b, uint32(vs[i+1]))
			case 8:
				b = ne.AppendUint64(b, vs[i+1])
			}
		}
		return b
	}
	want := []call{
		{vfioabi.CheckExtension, nil, 3},
		{vfioabi.GroupSetContainer, w(4, 3), 0},
		{vfioabi.IOMMUMapDMA, w(4, 32, 4, 3, 8, 0x7f0000200000, 8, 0x100000000, 8, 0x200000), 0},
		{vfioabi.IOMMUUnmapDMA, w(4, 24, 4, 0, 8, 0x100000000, 8, 0x200000), 0},
		{vfioabi.GroupGetDeviceFD, []byte(testAddr + "\x00"), 0},
	}
	if len(got) != len(want) {
		t.Fatalf("%d calls, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i].req != want[i].req || !slices.Equal(got[i].arg, want[i].arg) || got[i].val != want[i].val {
			t.Errorf("call %d: %#x %x %d, want %#x %x %d", i, got[i].req, got[i].arg, got[i].val, want[i].req, want[i].arg, want[i].val)
		}
	}
}

// A function with more MSI-X vectors than the driver spreads ports over
// gets maxVectors of them routed; NoIOMMU mode leaves UnmappedIOVA unset.
func TestVFIOVectorsCappedAndNoGuardWithoutIOMMU(t *testing.T) {
	fv := newFakeVFIO(t, true)
	fv.msixCount = 40
	f, err := fv.open()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if n := f.IRQ().MSIXVectors(); n != maxVectors || len(fv.irqFDs) != maxVectors {
		t.Errorf("%d vectors (%d routed) of 40, want %d", n, len(fv.irqFDs), maxVectors)
	}
	if iova, ok := f.UnmappedIOVA(); ok {
		t.Errorf("UnmappedIOVA = %#x in no-IOMMU mode, where the device sees physical addresses", iova)
	}
}

// The kernel's request for the device (an unplug) reaches Requested; the
// eventfd is disabled and closed with the function. Without the index,
// Requested is nil.
func TestVFIORequestInterrupt(t *testing.T) {
	fv := newFakeVFIO(t, false)
	fv.reqIRQ = true
	f, err := fv.open()
	if err != nil {
		t.Fatal(err)
	}
	if f.Requested() == nil || fv.reqFD <= 0 {
		t.Fatalf("request interrupt not routed: chan %v fd %d", f.Requested(), fv.reqFD)
	}
	select {
	case <-f.Requested():
		t.Fatal("requested before the kernel asked")
	case <-time.After(20 * time.Millisecond):
	}
	var one [8]byte
	one[0] = 1
	if _, err := unix.Write(int(fv.reqFD), one[:]); err != nil {
		t.Fatal(err)
	}
	select {
	case <-f.Requested():
	case <-time.After(10 * time.Second):
		t.Fatal("the kernel's request never reached Requested")
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if fv.reqFD != -1 {
		t.Errorf("request interrupt still routed after Close (fd %d)", fv.reqFD)
	}

	fv2 := newFakeVFIO(t, false)
	f2, err := fv2.open()
	if err != nil {
		t.Fatal(err)
	}
	defer f2.Close()
	if f2.Requested() != nil {
		t.Error("Requested is not nil without a request interrupt")
	}
}
