package ring

// The memory of a split queue: what New checks, how big each part is, and
// where the parts sit in the Modern and Legacy layouts (spec 2.7.2).

import (
	"errors"
	"fmt"

	"github.com/vserial/vserial/dma"
	"github.com/vserial/vserial/ring/internal/shm"
)

const legacyAlign = 4096

// checkConfig refuses what New cannot build: a size that is not a power of
// two up to 32768, no allocator, a layout New does not make, an indirect
// table longer than the queue.
func checkConfig(alloc dma.Allocator, cfg Config) error {
	if !shm.LittleEndian() {
		return errors.New("ring: new: big-endian hosts are not supported (the split ring is little-endian and published with 32-bit atomics)")
	}
	n := int(cfg.Size)
	if n == 0 || n > 32768 || n&(n-1) != 0 {
		return fmt.Errorf("ring: new: queue size %d is not a power of two in 1..32768", cfg.Size)
	}
	if alloc == nil {
		return errors.New("ring: new: nil allocator")
	}
	if cfg.Layout == PackedRing {
		return errors.New("ring: new: a packed ring is created with NewPacked")
	}
	if cfg.Layout != Modern && cfg.Layout != Legacy {
		return fmt.Errorf("ring: new: unknown layout %d", cfg.Layout)
	}
	if cfg.Indirect < 0 || cfg.Indirect > n {
		// Spec 2.7.5.3.1: no chain longer than the queue size, indirect or not.
		return fmt.Errorf("ring: new: indirect table of %d descriptors: want 0..%d", cfg.Indirect, n)
	}
	return nil
}

// layOut allocates the descriptor table, the driver and device areas in the
// configured layout, and the indirect tables, and checks the CPU alignment
// the 32-bit atomics need.
func (q *Queue) layOut(n int) error {
	availSize, usedSize := ringSizes(n)
	switch q.cfg.Layout {
	case Modern:
		d, err := q.allocate(descSize*n, 16)
		if err != nil {
			return err
		}
		a, err := q.allocate(availSize, 4)
		if err != nil {
			return err
		}
		u, err := q.allocate(usedSize, 4)
		if err != nil {
			return err
		}
		q.desc, q.avail, q.used = d.Bytes(), a.Bytes(), u.Bytes()
		q.descAddr, q.driverAddr, q.deviceAddr = d.Addr(), a.Addr(), u.Addr()
	case Legacy:
		// Spec 2.7.2 / VIRTIO-NOTES §3.3: one block, avail right after the
		// descriptors, used at the next 4096 boundary. The padding before
		// the used ring already holds the used_event word; 4 bytes past
		// the spec's size hold the avail_event word.
		usedOff, total := legacySizes(n)
		b, err := q.allocate(total, legacyAlign)
		if err != nil {
			return err
		}
		mem := b.Bytes()
		q.desc = mem[: descSize*n : descSize*n]
		q.avail = mem[descSize*n : usedOff : usedOff]
		q.used = mem[usedOff:total:total]
		q.descAddr = b.Addr()
		q.driverAddr = b.Addr() + uint64(descSize*n)
		q.deviceAddr = b.Addr() + uint64(usedOff)
	}
	if q.cfg.Indirect > 0 {
		t, err := q.allocate(descSize*q.cfg.Indirect*n, 16)
		if err != nil {
			return err
		}
		q.indirect, q.indirectAddr = t.Bytes(), t.Addr()
	}
	if !shm.Aligned4(q.avail) || !shm.Aligned4(q.used) {
		return errors.New("allocator returned memory that is not 4-byte aligned for the CPU; 32-bit atomics need it")
	}
	return nil
}

func alignUp(x, a int) int { return (x + a - 1) &^ (a - 1) }

// ringSizes are the sizes of the modern avail and used rings of n entries:
// spec 2.7 (VIRTIO-NOTES §4.2), plus 2 bytes after each ring so the 32-bit
// word holding used_event / avail_event lies inside.
func ringSizes(n int) (avail, used int) { return 6 + 2*n + 2, 6 + 8*n + 2 }

// legacySizes is the legacy block of n entries (spec 2.7.2): the used ring's
// offset and the size of the whole block.
func legacySizes(n int) (usedOff, total int) {
	usedOff = alignUp(descSize*n+6+2*n, legacyAlign)
	return usedOff, usedOff + 6 + 8*n + 4
}

// Footprint is how many bytes of device memory New (NewPacked for
// PackedRing) allocates for cfg, so
// a caller can check a budget before allocating. cfg is not validated.
func Footprint(cfg Config) int {
	n := int(cfg.Size)
	total := descSize * cfg.Indirect * n
	if cfg.Layout == PackedRing {
		return total + packedRingSize(n)
	}
	if cfg.Layout == Legacy {
		_, l := legacySizes(n)
		return total + l
	}
	a, u := ringSizes(n)
	return total + descSize*n + a + u
}
