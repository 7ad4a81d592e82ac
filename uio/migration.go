package uio

// Page migration under physical-address DMA. uio and VFIO no-IOMMU give the
// device the physical addresses of hugetlb pages the process maps. Linux
// does not pin those pages: to unplug memory (virtio-mem, ACPI DIMM
// hot-remove), to offline a block, or to make room for a contiguous (CMA)
// allocation it may migrate an in-use hugetlb page to another frame and
// update our page tables, and the device goes on writing to the old frame.
// MAP_LOCKED does not prevent it; only a long-term pin does (VFIO type1
// pins its mappings). The agent cannot prevent it from user space, so it
// looks for the configurations where it can happen and says so at start.

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// virtioMemID is the virtio device id of virtio-mem.
const virtioMemID = 0x18

// MigrationRisk is one reason why the kernel may move DMA pages under the
// device.
type MigrationRisk struct {
	// Likely: memory can go away on the host's or the kernel's initiative
	// here (virtio-mem, hot-pluggable DIMMs, movable memory blocks, CMA).
	// Otherwise only an operator's action (offlining a block) can do it.
	Likely bool
	Reason string
}

// MigrationRisks looks for the configurations in which the kernel may
// migrate hugetlb pages: virtio-mem devices and ACPI memory devices
// (hot-pluggable DIMMs) under sysfs, memory blocks in ZONE_MOVABLE, a CMA
// area in meminfo (CmaTotal), and memory offlining compiled in (every
// block's legacy "removable" file reads 1 then, since Linux 5.7). Files
// that are absent mean the feature is absent; the result is nil when
// nothing was found.
func MigrationRisks(sysfs, meminfo string) []MigrationRisk {
	var out []MigrationRisk
	add := func(likely bool, format string, args ...any) {
		out = append(out, MigrationRisk{Likely: likely, Reason: fmt.Sprintf(format, args...)})
	}
	if n := countVirtioMem(sysfs); n > 0 {
		add(true, "%d virtio-mem device(s): unplugging their memory migrates the pages in it", n)
	}
	if m, _ := filepath.Glob(filepath.Join(sysfs, "bus", "acpi", "devices", "PNP0C80:*")); len(m) > 0 {
		add(true, "%d ACPI memory device(s) (DIMM slots for memory hot-plug): removing a DIMM migrates the pages in it", len(m))
	}
	blocks, _ := filepath.Glob(filepath.Join(sysfs, "devices", "system", "memory", "memory[0-9]*"))
	movable, removable := 0, 0
	for _, b := range blocks {
		if z, err := os.ReadFile(filepath.Join(b, "valid_zones")); err == nil && strings.TrimSpace(string(z)) == "Movable" {
			movable++
		}
		if r, err := os.ReadFile(filepath.Join(b, "removable")); err == nil && strings.TrimSpace(string(r)) == "1" {
			removable++
		}
	}
	if movable > 0 {
		add(true, "%d memory block(s) online in ZONE_MOVABLE: they exist to be offlined, and hugepages there can be migrated", movable)
	}
	if kb := meminfoKB(meminfo, "CmaTotal"); kb > 0 {
		add(true, "a CMA area of %d kB (CmaTotal): contiguous allocations migrate pages out of it", kb)
	}
	if removable > 0 {
		add(false, "memory offlining is available (%d block(s) report removable): offlining a block (echo offline > .../memoryN/state) migrates the pages in it", removable)
	}
	return out
}

// countVirtioMem counts the virtio devices of type virtio-mem.
func countVirtioMem(sysfs string) int {
	devs, _ := filepath.Glob(filepath.Join(sysfs, "bus", "virtio", "devices", "*", "device"))
	n := 0
	for _, f := range devs {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if id, err := strconv.ParseUint(strings.TrimSpace(string(b)), 0, 32); err == nil && id == virtioMemID {
			n++
		}
	}
	return n
}

// meminfoKB returns the value of field (in kB) from a /proc/meminfo file,
// 0 if it is absent or unreadable.
func meminfoKB(path, field string) uint64 {
	f, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || k != field {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		if err != nil {
			return 0
		}
		return n
	}
	return 0
}

// WarnMigration logs the migration risks of physical-address DMA once per
// opened function: Warn for a likely one, Info for offlining alone.
func WarnMigration(sysfs string, opts Options, log *slog.Logger, mode string) {
	mi := opts.Meminfo
	if mi == "" {
		mi = "/proc/meminfo"
	}
	for _, r := range MigrationRisks(sysfs, mi) {
		level := slog.LevelInfo
		if r.Likely {
			level = slog.LevelWarn
		}
		log.Log(context.Background(), level, mode+": DMA pages can be migrated under the device",
			"reason", r.Reason, "safe", "VFIO type1 (an IOMMU) pins its DMA memory; see docs/operating.md, Bindings")
	}
}
