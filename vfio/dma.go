package vfio

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/vserial/vserial/uio"
	"github.com/vserial/vserial/vfio/internal/vfioabi"
)

// iovaChunk is the size of each piece of DMA memory the type1 backend maps.
const iovaChunk = 2 << 20

// iovaBase is where the type1 backend starts placing memory in the device's
// address space when the IOMMU allows it: above 4 GiB, so an IOVA is never
// mistaken for a low guest-physical address, and clear of the x86 MSI
// window (0xfee00000) and other low reserved ranges.
const iovaBase = 1 << 32

// iovaSource is the PageSource of the VFIO type1 backend: 2 MiB of ordinary
// anonymous memory per chunk, mapped into the IOMMU with VFIO_IOMMU_MAP_DMA
// at an IOVA we choose. Chunk k sits at start + 2k·2 MiB: every mapping is
// followed by a 2 MiB guard gap that is never mapped, so a device access
// that runs past a buffer faults in the IOMMU instead of reaching the next
// chunk, and start + 2 MiB (guard) is an IOVA that is guaranteed never to
// be mapped. The device sees only these mappings; VFIO pins the pages, so
// they neither move nor swap. No physical address, hugepage or
// CAP_SYS_ADMIN is needed.
type iovaSource struct {
	sys       vfioSys
	container int
	start     uint64 // first slot
	next, end uint64 // next free IOVA slot; end of the usable range (exclusive)

	mu   sync.Mutex
	live map[uintptr]uint64 // chunk address → its IOVA
}

func newIOVASource(sys vfioSys, container int, start, end uint64) *iovaSource {
	return &iovaSource{sys: sys, container: container, start: start, next: start, end: end, live: map[uintptr]uint64{}}
}

// iovaStride is the distance between two chunks: the chunk and its guard gap.
const iovaStride = 2 * iovaChunk

// guard is the first guard gap, an IOVA never mapped.
func (s *iovaSource) guard() uint64 { return s.start + iovaChunk }

func (s *iovaSource) ChunkSize() int   { return iovaChunk }
func (s *iovaSource) Describe() string { return "IOMMU-mapped 2 MiB chunks" }

func (s *iovaSource) Get() ([]byte, uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.end-s.next < iovaChunk || s.next >= s.end {
		return nil, 0, fmt.Errorf("no IOVA space left below %#x", s.end)
	}
	mem, err := unix.Mmap(-1, 0, iovaChunk, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
	if err != nil {
		return nil, 0, fmt.Errorf("mmap %d bytes: %w", iovaChunk, err)
	}
	// A forked child must not turn the pages copy-on-write under the device.
	if err := unix.Madvise(mem, unix.MADV_DONTFORK); err != nil {
		unix.Munmap(mem)
		return nil, 0, fmt.Errorf("madvise DONTFORK: %w", err)
	}
	iova := s.next
	if err := s.sys.mapDMA(s.container, uint64(addrOf(mem)), iova, iovaChunk); err != nil {
		unix.Munmap(mem)
		if errors.Is(err, unix.ENOMEM) {
			err = fmt.Errorf("%w (pinned pages count against RLIMIT_MEMLOCK: raise it or run as root)", err)
		}
		return nil, 0, fmt.Errorf("map dma at iova %#x: %w", iova, err)
	}
	s.next += iovaStride // leave the guard gap unmapped
	s.live[addrOf(mem)] = iova
	return mem, iova, nil
}

// put unmaps the chunk from the IOMMU, then from the process.
func (s *iovaSource) Put(mem []byte) error {
	s.mu.Lock()
	iova, ok := s.live[addrOf(mem)]
	delete(s.live, addrOf(mem))
	s.mu.Unlock()
	if !ok {
		return fmt.Errorf("unmap dma: chunk at %#x was not mapped here", addrOf(mem))
	}
	n, err := s.sys.unmapDMA(s.container, iova, uint64(len(mem)))
	if err == nil && n != uint64(len(mem)) {
		err = fmt.Errorf("kernel unmapped %d of %d bytes", n, len(mem))
	}
	if err != nil {
		// The device may still reach the pages: leak them rather than
		// hand them back to the kernel while mapped.
		return fmt.Errorf("unmap dma at iova %#x: %w (memory left mapped)", iova, err)
	}
	return unix.Munmap(mem)
}

// pickIOVA chooses the IOVA window for DMA memory: the part of the usable
// ranges (VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE; none reported means the
// whole 64-bit space) at or above iovaBase if one holds at least need
// bytes, else the largest window anywhere, 2 MiB-aligned. end is exclusive.
func pickIOVA(ranges []vfioabi.IOVARange, need uint64) (start, end uint64, err error) {
	if len(ranges) == 0 {
		ranges = []vfioabi.IOVARange{{Start: 0, End: 1<<48 - 1}}
	}
	rs := append([]vfioabi.IOVARange(nil), ranges...)
	sort.Slice(rs, func(i, j int) bool { return rs[i].Start < rs[j].Start })
	window := func(r vfioabi.IOVARange, from uint64) (uint64, uint64) {
		s := max(r.Start, from)
		s = (s + iovaChunk - 1) &^ (iovaChunk - 1)
		e := r.End &^ (iovaChunk - 1) // last full chunk ends at or below End+1
		if r.End&(iovaChunk-1) == iovaChunk-1 {
			e = r.End + 1
		}
		if s == 0 && from == 0 {
			s = iovaChunk // keep IOVA 0 unused: a zero address in a descriptor is a bug, not memory
		}
		if e <= s {
			return 0, 0
		}
		return s, e
	}
	for _, r := range rs {
		if r.End < iovaBase {
			continue
		}
		if s, e := window(r, iovaBase); e-s >= need {
			return s, e, nil
		}
	}
	var bs, be uint64
	for _, r := range rs {
		if s, e := window(r, 0); e-s > be-bs {
			bs, be = s, e
		}
	}
	if be-bs < need {
		return 0, 0, fmt.Errorf("no usable IOVA range of %d bytes in %x", need, ranges)
	}
	return bs, be, nil
}

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
