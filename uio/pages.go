package uio

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

const hugeSize = 2 << 20

// hugeSource maps one 2 MiB hugepage per chunk. A hugepage is physically
// contiguous, so one pagemap lookup gives the physical address of all of it
// (we still check every 4 KiB subpage). hugetlb pages are never swapped,
// and MAP_LOCKED|MAP_POPULATE faults them in up front; but the kernel may
// still migrate an in-use hugetlb page (memory hot-unplug, virtio-mem,
// CMA, offlining: see migration.go), which the device, holding its
// physical address, would not see.
//
// When no hugepage is free and reserve is set, get raises the pool by one
// page and counts it; close gives every page it added back, so the pool
// ends where it started.
type hugeSource struct {
	pagemap string // /proc/self/pagemap
	nrFile  string // the nr_hugepages file for 2 MiB pages
	reserve bool   // may raise nr_hugepages when none is free
	// mapFn maps one hugepage (nil: mapHuge); tests replace it.
	mapFn func() ([]byte, error)

	mu       sync.Mutex
	reserved int // pages this source added to the pool and not given back
}

func (h *hugeSource) ChunkSize() int   { return hugeSize }
func (h *hugeSource) Describe() string { return "2 MiB hugepages" }

func mapHuge() ([]byte, error) {
	return unix.Mmap(-1, 0, hugeSize, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_SHARED|unix.MAP_ANONYMOUS|unix.MAP_HUGETLB|unix.MAP_HUGE_2MB|unix.MAP_POPULATE|unix.MAP_LOCKED)
}

func (h *hugeSource) Get() ([]byte, uint64, error) {
	mapFn := h.mapFn
	if mapFn == nil {
		mapFn = mapHuge
	}
	mem, err := mapFn()
	var rerr error
	if errors.Is(err, unix.ENOMEM) && h.reserve {
		// hugetlb accounts at mmap time: ENOMEM means no free hugepage.
		if rerr = reserveHugepages(h.nrFile, 1); rerr == nil {
			h.mu.Lock()
			h.reserved++
			h.mu.Unlock()
			mem, err = mapFn()
		}
	}
	switch {
	case errors.Is(err, unix.ENOMEM):
		msg := "no free 2 MiB hugepage"
		if rerr != nil {
			msg += fmt.Sprintf(" and reserving one failed (%v)", rerr)
		}
		return nil, 0, fmt.Errorf("%w: %s: set vm.nr_hugepages=N (sysctl or %s) or boot with hugepages=N",
			ErrNoHugepages, msg, h.nrFile)
	case errors.Is(err, unix.EAGAIN):
		return nil, 0, fmt.Errorf("%w: mmap MAP_LOCKED refused (RLIMIT_MEMLOCK too low? run as root): %v", ErrNoHugepages, err)
	case err != nil:
		return nil, 0, fmt.Errorf("%w: mmap: %v", ErrNoHugepages, err)
	}
	phys, err := physOf(h.pagemap, addrOf(mem), hugeSize)
	if err != nil {
		unix.Munmap(mem)
		return nil, 0, err
	}
	if phys%hugeSize != 0 {
		unix.Munmap(mem)
		return nil, 0, fmt.Errorf("hugepage at physical %#x is not 2 MiB aligned", phys)
	}
	return mem, phys, nil
}

func (h *hugeSource) Put(mem []byte) error { return unix.Munmap(mem) }

// close gives back the pages this source added to the pool. The caller
// has unmapped its chunks; pages other devices still map are not freed by
// the kernel when the pool shrinks below them (they become surplus pages,
// freed when unmapped), so the pool still ends where it started.
func (h *hugeSource) close() (given int, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.reserved == 0 {
		return 0, nil
	}
	if err := releaseHugepages(h.nrFile, h.reserved); err != nil {
		return 0, err
	}
	given, h.reserved = h.reserved, 0
	return given, nil
}

// poolMu serialises the read-modify-write of nr_hugepages within the
// process: devices opening and closing at once must not undo each other's
// change. (Another process writing the file at the same moment can still
// race; the kernel offers no lock.)
var poolMu sync.Mutex

// reserveHugepages raises the 2 MiB hugepage pool in nrFile by n and checks
// that the kernel actually found the pages (it reserves fewer when memory
// is fragmented, silently).
func reserveHugepages(nrFile string, n int) error {
	want, got, err := changePool(nrFile, n)
	if err != nil {
		return fmt.Errorf("raise hugepage pool: %w", err)
	}
	if got < want {
		return fmt.Errorf("raise hugepage pool: %s is %d after writing %d (memory too fragmented?)", nrFile, got, want)
	}
	return nil
}

// releaseHugepages lowers the pool in nrFile by n (not below 0).
func releaseHugepages(nrFile string, n int) error {
	if _, _, err := changePool(nrFile, -n); err != nil {
		return fmt.Errorf("give back %d hugepages: %w", n, err)
	}
	return nil
}

// changePool adds delta to the pool in nrFile (not below 0) under poolMu:
// the value written, and the value read back.
func changePool(nrFile string, delta int) (want, got int, err error) {
	poolMu.Lock()
	defer poolMu.Unlock()
	cur, err := readCount(nrFile)
	if err != nil {
		return 0, 0, err
	}
	want = max(cur+delta, 0)
	if err := os.WriteFile(nrFile, []byte(strconv.Itoa(want)+"\n"), 0); err != nil {
		return 0, 0, err
	}
	got, err = readCount(nrFile)
	return want, got, err
}

func readCount(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	s := strings.TrimSuffix(string(b), "\n")
	v, err := strconv.Atoi(s)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("%s: %q is not a count", path, s)
	}
	return v, nil
}

// smallSource maps single 4 KiB pages, locked with mlock. Caveat: mlock
// keeps a page resident but does not pin its physical address. The kernel
// may still migrate it (compaction of unevictable pages while
// vm.compact_unevictable_allowed=1, the default; NUMA balancing; memory
// hot-remove), after which the device would write to the old frame. It is a
// fallback for guests without hugepages (Options.AllowSmallPages), not a
// mode to rely on. Each chunk is one page, so every allocation is at most
// 4096 bytes; the split-ring parts for a queue of up to 256 entries fit.
type smallSource struct {
	pagemap string
}

func (s *smallSource) ChunkSize() int   { return os.Getpagesize() }
func (s *smallSource) Describe() string { return "locked 4 KiB pages" }

func (s *smallSource) Get() ([]byte, uint64, error) {
	page := os.Getpagesize()
	mem, err := unix.Mmap(-1, 0, page, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
	if err != nil {
		return nil, 0, fmt.Errorf("mmap a page: %w", err)
	}
	// A forked child must not turn the page copy-on-write under the device.
	if err := unix.Madvise(mem, unix.MADV_DONTFORK); err != nil {
		unix.Munmap(mem)
		return nil, 0, fmt.Errorf("madvise DONTFORK: %w", err)
	}
	if err := unix.Mlock(mem); err != nil {
		unix.Munmap(mem)
		return nil, 0, fmt.Errorf("mlock (RLIMIT_MEMLOCK too low? run as root): %w", err)
	}
	phys, err := physOf(s.pagemap, addrOf(mem), page)
	if err != nil {
		unix.Munmap(mem)
		return nil, 0, err
	}
	return mem, phys, nil
}

func (s *smallSource) Put(mem []byte) error { return unix.Munmap(mem) }

// PhysicalPages returns the page sources of physical-address DMA (uio and
// VFIO no-IOMMU): hugepages, with 4 KiB pages as an opt-in fallback.
func PhysicalPages(sysfs string, opts Options) (src, fallback PageSource) {
	pm := opts.Pagemap
	if pm == "" {
		pm = "/proc/self/pagemap"
	}
	nr := opts.HugepagesFile
	if nr == "" {
		nr = filepath.Join(sysfs, "kernel", "mm", "hugepages", "hugepages-2048kB", "nr_hugepages")
	}
	src = &hugeSource{pagemap: pm, nrFile: nr, reserve: !opts.NoReserve}
	if opts.AllowSmallPages {
		fallback = &smallSource{pagemap: pm}
	}
	return src, fallback
}
