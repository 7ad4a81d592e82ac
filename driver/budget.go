package driver

// The per-device DMA budget: every byte of device memory the driver takes
// goes through dmaBudget, which refuses what would exceed the limit before
// asking the allocator, and each decision that depends on device values
// (how many port slots get queues, how many buffers a port gets) is
// checked against what is left first. docs/memory.md has the figures.

import (
	"errors"
	"fmt"
	"sync"

	"github.com/vserial/vserial/dma"
	"github.com/vserial/vserial/ring"
)

// DefaultDMABudget is the per-device budget when Config.DMABudget is 0:
// the control queues and 64 ports, each with its full buffer set (256
// receive buffers of 4 KiB, 32 transmit buffers of 32 KiB) and rings of
// the largest size either interface allows (256 modern, 1024 legacy).
// TestDefaultBudgetFits64FullPorts pins that it is enough.
const DefaultDMABudget = 133 << 20

// Buffer sets. A port's full set is what the data plane needs for
// throughput (PERF-DESIGN D7: QEMU fills at most 4 KiB per receive buffer
// and 128 buffers per pass; 32 × 32 KiB in flight exceed any client's send
// buffer). The reduced set is what a port gets when the budget cannot give
// it the full one: it works, slower.
const (
	maxRxBuffers = 256 // receive buffers of a port (and the control receiveq) at most
	minRxBuffers = 8   // reduced set: receive buffers
	minTxBuffers = 8   // reduced set: transmit buffers of bufSize
	// reducedShare is the most a reduced set costs; every slot with queues
	// is guaranteed it.
	reducedShare = (minRxBuffers + minTxBuffers) * bufSize
)

// ErrDMABudget is matched by allocations refused because they would exceed
// the device's DMA budget (Config.DMABudget).
var ErrDMABudget = errors.New("driver: DMA budget exhausted")

// dmaBudget wraps the function's allocator and keeps the device within its
// budget. Bytes promised to a port's transmit buffers (allocated at its
// first send) are reserved so that later ports cannot take them.
type dmaBudget struct {
	a     dma.Allocator
	limit int

	mu       sync.Mutex
	used     int // bytes allocated and not freed
	reserved int // bytes promised, not allocated yet
	peak     int // most bytes allocated at once
}

func newDMABudget(a dma.Allocator, limit int) *dmaBudget {
	return &dmaBudget{a: a, limit: limit}
}

// Alloc implements dma.Allocator: it refuses before allocating when size
// does not fit in what is left.
func (b *dmaBudget) Alloc(size, align int) (dma.Region, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if left := b.limit - b.used - b.reserved; size > left {
		return dma.Region{}, fmt.Errorf("%w: %d bytes asked, %d of %d left", ErrDMABudget, size, max(left, 0), b.limit)
	}
	r, err := b.a.Alloc(size, align)
	if err != nil {
		return r, err
	}
	b.used += r.Len()
	b.peak = max(b.peak, b.used)
	return r, nil
}

// Free implements dma.Allocator.
func (b *dmaBudget) Free(r dma.Region) error {
	if err := b.a.Free(r); err != nil {
		return err
	}
	b.mu.Lock()
	b.used -= r.Len()
	b.mu.Unlock()
	return nil
}

// left is what can still be allocated or promised.
func (b *dmaBudget) left() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.limit - b.used - b.reserved
}

// reserve promises n bytes (n ≤ left) to a later Alloc; unreserve takes
// the promise back just before that Alloc.
func (b *dmaBudget) reserve(n int) {
	b.mu.Lock()
	b.reserved += n
	b.mu.Unlock()
}

func (b *dmaBudget) unreserve(n int) {
	b.mu.Lock()
	b.reserved -= n
	b.mu.Unlock()
}

// DMAUsage reports the device's DMA memory: bytes allocated now, the most
// allocated at once, bytes promised to transmit buffers not allocated yet,
// and the budget.
type DMAUsage struct {
	InUse, Peak, Reserved, Budget int
}

// DMAUsage returns the device's DMA memory figures.
func (d *Device) DMAUsage() DMAUsage {
	b := d.mem
	b.mu.Lock()
	defer b.mu.Unlock()
	return DMAUsage{InUse: b.used, Peak: b.peak, Reserved: b.reserved, Budget: b.limit}
}

// bufPlan is the buffer set of one port slot, decided at its first
// PORT_ADD and kept for the life of the device.
type bufPlan struct {
	rx, tx, txSize int
}

func (p bufPlan) bytes() int { return p.rx*bufSize + p.tx*p.txSize }

// fullPlan is the set a port gets when the budget allows: the receive
// queue filled (at most maxRxBuffers), 32 transmit buffers of 32 KiB,
// unless Config says otherwise.
func (d *Device) fullPlan(s *slot) bufPlan {
	rx := min(int(s.rx.Size()), maxRxBuffers)
	if d.cfg.RxBuffers > 0 {
		rx = min(rx, d.cfg.RxBuffers)
	}
	tx := d.cfg.TxBuffers
	if tx <= 0 {
		tx = defaultTxBuffers
	}
	size := d.cfg.TxBufferSize
	if size <= 0 {
		size = defaultTxBufferSize
	}
	return bufPlan{rx: rx, tx: min(tx, int(s.tx.Size())), txSize: size}
}

// reducedPlan is the set beyond the budget: a few page-sized buffers.
func (d *Device) reducedPlan(s *slot) bufPlan {
	full := d.fullPlan(s)
	return bufPlan{rx: min(full.rx, minRxBuffers), tx: min(full.tx, minTxBuffers), txSize: min(full.txSize, bufSize)}
}

// planLocked decides slot s's buffer set at its first PORT_ADD and reserves
// its transmit buffers. The full set is granted only if every slot not yet
// planned can still get a reduced one afterwards; a reduced set when that
// fits; otherwise the port is refused (ErrDMABudget).
func (d *Device) planLocked(s *slot) error {
	if s.planned {
		return nil
	}
	full, red := d.fullPlan(s), d.reducedPlan(s)
	left := d.mem.left()
	others := d.unplanned - 1 // slots with queues and no plan, besides s
	var plan bufPlan
	switch {
	case left >= full.bytes()+others*reducedShare:
		plan = full
	case left >= red.bytes():
		plan = red
		d.stats.BudgetReduced++
		d.limitedLocked(&d.limits.reduced, s, fmt.Errorf("%w: port %d and later ports get %d receive and %d transmit buffers of %d bytes instead of %d and %d (%d bytes left of %d)",
			ErrDMABudget, s.id, red.rx, red.tx, bufSize, full.rx, full.tx, left, d.mem.limit))
	default:
		d.stats.BudgetRefused++
		err := fmt.Errorf("%w: port %d refused: its buffers need %d bytes, %d left of %d", ErrDMABudget, s.id, red.bytes(), left, d.mem.limit)
		d.limitedLocked(&d.limits.refused, s, err)
		return err
	}
	s.plan, s.planned = plan, true
	d.unplanned--
	s.txReserved = plan.tx * plan.txSize
	d.mem.reserve(s.txReserved)
	return nil
}

// budgetLimits remembers which budget limits a device has hit: each is
// logged at Warn and reported as a DeviceLimited event once per device;
// the counters in DeviceStats go on counting.
type budgetLimits struct {
	slots, reduced, refused bool
}

// limitedLocked logs and reports err the first time *once is false.
func (d *Device) limitedLocked(once *bool, s *slot, err error) {
	if *once {
		return
	}
	*once = true
	d.log.Warn("virtio-console: DMA budget", "err", err, "budget", d.mem.limit)
	ev := Event{Kind: DeviceLimited, Err: err, Violations: d.stats.Violations}
	if s != nil && s.port != nil {
		ev.Port = s.port
	}
	d.emitDeviceLocked(ev)
}

// slotCost is what bring-up must have left before it gives port id queues:
// its two rings now, and a reduced buffer set for it and every slot before
// it later.
func slotCost(rx, tx ring.Config) int {
	return ring.Footprint(rx) + ring.Footprint(tx)
}
