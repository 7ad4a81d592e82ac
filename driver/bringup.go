package driver

// Bring-up: the one sequence that both Open and recovery run (reset,
// features, queues, vectors, control buffers, DRIVER_OK, DEVICE_READY), and
// what a reset leaves behind.
//
// Open (device.go) runs the whole bring-up through this file: reset, ACKNOWLEDGE|DRIVER,
// features (MULTIPORT, VERSION_1, EVENT_IDX, F_SIZE and EMERG_WRITE when
// offered; ACCESS_PLATFORM, required, when the function is behind an IOMMU),
// max_nr_ports (0 with MULTIPORT fails Open; capped at MaxPorts, at the
// 16-bit queue numbers, at Config.MaxPorts and at what the DMA budget
// holds), every queue of every served port before DRIVER_OK, the control
// receiveq filled with 4096-byte buffers, then DEVICE_READY(0xffffffff, 1).
// Every byte of device memory is checked against the per-device budget
// (Config.DMABudget, budget.go) before it is allocated: ports beyond it get
// a reduced buffer set, and the device a DeviceLimited event. QEMU replays PORT_ADD for
// every port on DEVICE_READY and answers synchronously, so Open returns
// with the cold-plugged ports known; every port is also reported on Events.
// Without MULTIPORT there is one console port 0 on queues 0/1 and no
// control traffic.

import (
	"errors"
	"fmt"
	"math/bits"
	"time"

	"github.com/vserial/vserial/ring"
)

// queueSize chooses the size of a queue the device offers max for.
func queueSize(max uint16, legacy bool) (uint16, error) {
	if max == 0 {
		return 0, nil
	}
	if legacy {
		if max&(max-1) != 0 || max > maxLegacyQueueSize {
			return 0, fmt.Errorf("%w: legacy queue size %d", ErrBadQueue, max)
		}
		return max, nil
	}
	s := min(max, maxQueueSize)
	return uint16(1) << (bits.Len16(s) - 1), nil
}

// bringUpLocked runs device initialisation. The first time it allocates
// queues and control buffers; afterwards (recovery) it reuses them and
// checks that the device still describes itself the same way. A device
// that refuses an MSI-X vector (it reads back NO_VECTOR) gets the whole
// sequence again, from the reset, with fewer vectors, as Linux's
// vp_find_vqs falls back: one vector per port, then every data queue on
// one shared vector, then a single vector for everything.
func (d *Device) bringUpLocked(first bool) error {
	for {
		err := d.bringUpOnceLocked(first)
		if err == nil || !errors.Is(err, ErrVectorRefused) || d.nvec <= 1 {
			return err
		}
		was := d.nvec
		d.nvec = min(d.nvec-1, 2)
		d.stats.VectorFallbacks++
		d.log.Warn("virtio-console: the device refused an MSI-X vector; fewer vectors", "err", err, "vectors", was, "now", d.nvec)
	}
}

func (d *Device) bringUpOnceLocked(first bool) error {
	if err := d.resetLocked(first); err != nil {
		return err
	}
	if err := d.negotiateLocked(first); err != nil {
		return err
	}
	if err := d.readMaxPortsLocked(first); err != nil {
		return err
	}
	if err := d.setupQueuesLocked(first); err != nil {
		return err
	}
	return d.goLiveLocked(first)
}

// resetLocked resets the device (re-enabling it first in a recovery),
// salvages what the device finished before the reset, and announces the
// driver (ACKNOWLEDGE, DRIVER).
func (d *Device) resetLocked(first bool) error {
	t := d.t
	if !first {
		// QEMU drops DRIVER_OK when Bus Master is cleared (VIRTIO-NOTES
		// §12.7); a recovery must not depend on it still being set.
		if err := enableDevice(d.fn.Config(), t.Legacy()); err != nil {
			return fmt.Errorf("enable device: %w", err)
		}
	}
	if err := t.Reset(); err != nil {
		return err
	}
	if !first && d.queues != nil {
		d.salvageLocked(d.resetCause)
	}
	if err := t.AddStatus(StatusAcknowledge); err != nil {
		return err
	}
	return t.AddStatus(StatusDriver)
}

// negotiateLocked agrees on the features; a recovery must get the same.
func (d *Device) negotiateLocked(first bool) error {
	// F_SIZE and EMERG_WRITE are taken when offered (negotiateFeatures
	// drops unoffered bits): console sizes, and EmergencyWrite.
	want := FeatureConsoleMultiport | FeatureVersion1 | FeatureEventIdx | FeatureConsoleSize | FeatureConsoleEmergWrite
	// Ring layout: RING_PACKED (bit 34) is wanted unless Config.Ring is
	// RingSplit and required for RingPacked; the legacy interface's 32
	// bits never carry it. When negotiated every queue — data, control,
	// after a reset, of hot-plugged ports — is a ring.Packed (queueConfig,
	// newVirtqueue): one allocation with the descriptor ring 16-aligned and
	// the driver and device event suppression words 4-aligned after it
	// (spec 2.8.10.1). Nothing above the virtqueue interface knows it.
	var required uint64
	switch d.cfg.Ring {
	case RingAuto:
		want |= FeatureRingPacked // dropped when not offered, or on legacy
	case RingPacked:
		want |= FeatureRingPacked
		required |= FeatureRingPacked
	}
	if d.fn.IOMMU() {
		want |= FeatureAccessPlatform
		required |= FeatureAccessPlatform
	}
	feat, err := negotiateFeatures(d.t, want, required)
	if err != nil {
		return err
	}
	if !first && feat != d.features {
		return fmt.Errorf("features changed across reset: %#x, was %#x", feat, d.features)
	}
	d.features = feat
	d.multiport = feat&FeatureConsoleMultiport != 0
	d.eventIdx = feat&FeatureEventIdx != 0
	d.packed = feat&FeatureRingPacked != 0
	d.sizeF = feat&FeatureConsoleSize != 0
	d.emergF = feat&FeatureConsoleEmergWrite != 0
	if first {
		// One line per device: which ring layout it runs on is otherwise
		// visible only through Features (list does not show it).
		layout := "split"
		if d.packed {
			layout = "packed"
		}
		d.log.Info("virtio-console: features negotiated", "features", fmt.Sprintf("%#x", feat), "ring", layout, "event_idx", d.eventIdx)
	}
	return nil
}

// readMaxPortsLocked reads and checks max_nr_ports; a recovery must read
// the same.
func (d *Device) readMaxPortsLocked(first bool) error {
	maxNr := uint32(1)
	if d.multiport {
		var b [4]byte
		if err := d.t.ReadConfig(4, b[:]); err != nil {
			return fmt.Errorf("read max_nr_ports: %w", err)
		}
		maxNr = d.order.Uint32(b[:])
		if maxNr == 0 {
			d.failStatus()
			return fmt.Errorf("%w: max_nr_ports is 0 with MULTIPORT", ErrDeviceProtocolConsole)
		}
		if maxNr > MaxPorts {
			d.log.Warn("virtio-console: max_nr_ports capped", "max_nr_ports", maxNr, "cap", MaxPorts)
			maxNr = MaxPorts
		}
	}
	if !first && maxNr != d.maxNr {
		return fmt.Errorf("max_nr_ports changed across reset: %d, was %d", maxNr, d.maxNr)
	}
	d.maxNr = maxNr
	return nil
}

// setupQueuesLocked picks the vectors and allocates the queues the first
// time, and programs every queue into the device.
func (d *Device) setupQueuesLocked(first bool) error {
	t := d.t
	nslots := d.maxNr
	if d.cfg.MaxPorts > 0 && nslots > d.cfg.MaxPorts {
		nslots = d.cfg.MaxPorts
	}
	// Queue numbers are 16-bit: port 0x7ffe's transmitq (0xffff) is the
	// last one.
	nslots = min(nslots, MaxPorts-1)
	if first && !d.vectorsChosen {
		d.nslots = nslots
		if err := d.setupVectors(); err != nil {
			return err
		}
	}
	if err := t.SetConfigVector(d.vecConfig); err != nil {
		return err
	}
	if first && d.queues == nil {
		if err := d.allocQueuesLocked(); err != nil {
			return err
		}
	}
	for qi, q := range d.queues {
		if q == nil {
			continue
		}
		if !first {
			q.Reset()
		}
		err := t.SetupQueue(uint16(qi), QueueSetup{
			Size: q.Size(), Desc: q.DescAddr(), Driver: q.DriverAddr(), Device: q.DeviceAddr(),
			Vector: d.queueVector(uint16(qi)),
		})
		if err != nil {
			return fmt.Errorf("queue %d: %w", qi, err)
		}
	}
	if !first {
		d.forgetInFlightLocked()
	}
	// Transmit interrupts only while someone waits for buffers (waitTx).
	for _, s := range d.slots {
		if s != nil && s.txWaiters == 0 {
			s.tx.DisableInterrupts()
		}
	}
	return nil
}

// goLiveLocked stocks the control queue, sets DRIVER_OK, and with
// MULTIPORT says DEVICE_READY and takes the device's first answers.
func (d *Device) goLiveLocked(first bool) error {
	t := d.t
	kickCtrl := false
	if d.multiport {
		var err error
		if kickCtrl, err = d.fillControlRxLocked(); err != nil {
			return err
		}
	}
	if err := t.AddStatus(StatusDriverOK); err != nil {
		return err
	}
	if st, err := t.Status(); err != nil {
		return err
	} else if st&StatusDriverOK == 0 || st&(StatusDeviceNeedsReset|StatusFailed) != 0 {
		return fmt.Errorf("%w: status %#x after DRIVER_OK", ErrDeviceProtocolConsole, st)
	}
	if kickCtrl {
		d.notifyLocked(controlRxQueue)
	}
	if !d.multiport {
		return d.singlePortLocked()
	}
	// VIRTIO-NOTES §7.5 step 3. QEMU answers synchronously with PORT_ADD
	// for every port, which the drain below handles.
	d.sendControlLocked(badPortID, eventDeviceReady, 1)
	// Bounded: a device that answers every answer must not hold bring-up
	// forever; what is left goes to the event loop.
	more, err := d.serviceControlPassesLocked(4*int(d.nslots) + maxControlPasses)
	if err != nil {
		return err
	}
	if more {
		d.pendingWork = true
	}
	if !first {
		d.scheduleUnannouncedDropLocked()
	}
	return nil
}

// reannounceGrace is how long after a reset the driver waits for the device
// to announce a port again before it removes the port. QEMU replays every
// PORT_ADD on DEVICE_READY, but from its main loop when the doorbell goes
// through an ioeventfd (virtio-pci's default), so the replay may arrive
// well after bring-up returns; removing ports at once would replace every
// port (and drop its client) on each reset.
const reannounceGrace = 2 * time.Second

// scheduleUnannouncedDropLocked removes, reannounceGrace from now, the
// ports the device has not announced again since this reset.
func (d *Device) scheduleUnannouncedDropLocked() {
	if d.reannounceTimer != nil {
		d.reannounceTimer.Stop()
		d.reannounceTimer = nil
	}
	pending := false
	for _, s := range d.slots {
		if s != nil && s.port != nil && !s.port.removed && s.port.reannounce {
			pending = true
			break
		}
	}
	if !pending {
		return
	}
	resets := d.stats.Resets
	d.reannounceTimer = time.AfterFunc(reannounceGrace, func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		if d.broken() || d.stats.Resets != resets {
			return // stopped, or a later reset has its own timer
		}
		d.reannounceTimer = nil
		d.dropUnannouncedLocked()
	})
}

// setupVectors picks the MSI-X layout. Vector 0 carries configuration
// changes and the control queues; with n ≥ 2 vectors the data queues of
// port id p are on vector 1 + p mod (n-1): with QEMU's default of two
// vectors every data queue shares vector 1, with more each port (up to
// n-1 of them) has its own, so a wake-up services only the ports whose
// vector fired. With one vector everything is on 0; without MSI-X, none
// (INTx).
func (d *Device) setupVectors() error {
	n := d.fn.IRQ().MSIXVectors()
	if n < 0 || n > 0x800 { // the MSI-X table size field is 11 bits
		return fmt.Errorf("driver: the interrupt source reports %d MSI-X vectors", n)
	}
	d.nvec = n
	d.vectorsChosen = true
	d.vecConfig = 0
	if n == 0 {
		d.vecConfig = NoVector
	}
	return nil
}

// queueVector is the MSI-X vector of queue qi (see setupVectors).
func (d *Device) queueVector(qi uint16) uint16 {
	switch {
	case d.nvec == 0:
		return NoVector
	case d.nvec == 1:
		return 0
	}
	var port uint32
	switch {
	case !d.multiport || qi < 2:
		port = 0
	case qi == controlRxQueue || qi == controlTxQueue:
		return d.vecConfig
	default:
		port = uint32(qi)/2 - 1
	}
	return uint16(1 + port%uint32(d.nvec-1))
}

// vectorBit is the bit of vector v in a WaitVectors set.
func vectorBit(v uint16) uint64 { return 1 << min(v, 63) }

// queueCount is the number of queues the driver sets up.
func (d *Device) queueCount() int {
	if !d.multiport {
		return 2
	}
	return 2 * (int(d.nslots) + 1)
}

// allocQueuesLocked creates every queue (all before DRIVER_OK, so
// hot-plugged ports work) and the slots of the ports that have queues.
// Port 0's and the control queues come first, with the control buffers;
// then each further port's two queues, as long as the DMA budget leaves
// room for them and a reduced buffer set for every slot so far. Where it
// does not, the ports are capped there (logged, DeviceLimited), so no
// device value makes the driver allocate beyond its budget.
func (d *Device) allocQueuesLocked() error {
	n := d.queueCount()
	d.queues = make([]virtqueue, n)
	d.slots = make([]*slot, d.nslots)
	fixed := min(n, 4)
	for qi := range fixed {
		if err := d.allocQueueLocked(qi, qi < 2 || d.multiport); err != nil {
			return err
		}
	}
	d.addSlotLocked(0)
	if d.multiport {
		if err := d.allocControlLocked(); err != nil {
			return err
		}
	}
	for id := uint32(1); id < d.nslots; id++ {
		rxq, txq := portQueues(id)
		rx, err := d.queueConfig(int(rxq))
		if err != nil {
			return err
		}
		tx, err := d.queueConfig(int(txq))
		if err != nil {
			return err
		}
		if rx.Size == 0 || tx.Size == 0 {
			continue // no queues, no port with this id
		}
		if left := d.mem.left(); slotCost(rx, tx)+(d.unplanned+1)*reducedShare > left {
			d.limitedLocked(&d.limits.slots, nil, fmt.Errorf("%w: ports capped at %d of the %d the device offers (%d bytes of %d left)",
				ErrDMABudget, id, d.maxNr, left, d.mem.limit))
			d.nslots = id
			d.queues = d.queues[:d.queueCount()]
			d.slots = d.slots[:id]
			break
		}
		if err := d.newQueueLocked(int(rxq), rx); err != nil {
			return err
		}
		if err := d.newQueueLocked(int(txq), tx); err != nil {
			return err
		}
		d.addSlotLocked(id)
	}
	return nil
}

// queueConfig is the ring queue qi gets: size 0 if the device has no such
// queue.
func (d *Device) queueConfig(qi int) (ring.Config, error) {
	layout := ring.Modern
	switch {
	case d.packed:
		layout = ring.PackedRing
	case d.t.Legacy():
		layout = ring.Legacy
	}
	max, err := d.t.QueueMax(uint16(qi))
	if err != nil && !errors.Is(err, ErrNoQueue) {
		return ring.Config{}, fmt.Errorf("queue %d: %w", qi, err)
	}
	size, err := queueSize(max, d.t.Legacy())
	if err != nil {
		return ring.Config{}, fmt.Errorf("queue %d: %w", qi, err)
	}
	return ring.Config{Size: size, Layout: layout, EventIdx: d.eventIdx}, nil
}

// allocQueueLocked creates queue qi, if the device has it; a required
// queue must exist.
func (d *Device) allocQueueLocked(qi int, required bool) error {
	cfg, err := d.queueConfig(qi)
	if err != nil {
		return err
	}
	if cfg.Size == 0 {
		if required {
			return fmt.Errorf("%w: queue %d does not exist", ErrNoQueue, qi)
		}
		return nil
	}
	return d.newQueueLocked(qi, cfg)
}

// newQueueLocked allocates queue qi's ring.
func (d *Device) newQueueLocked(qi int, cfg ring.Config) error {
	q, err := newVirtqueue(d.alloc, cfg)
	if err != nil {
		return fmt.Errorf("queue %d: %w", qi, err)
	}
	d.queues[qi] = q
	return nil
}

// addSlotLocked makes the slot of port id if both its queues exist.
func (d *Device) addSlotLocked(id uint32) {
	rxq, txq := portQueues(id)
	if int(txq) >= len(d.queues) || d.queues[rxq] == nil || d.queues[txq] == nil {
		return
	}
	s := &slot{id: id, rxq: rxq, txq: txq, rx: d.queues[rxq], tx: d.queues[txq]}
	s.rxByHead = newHeadMap(int(s.rx.Size()))
	s.txByHead = newHeadMap(int(s.tx.Size()))
	d.slots[id] = s
	d.unplanned++
}

func newHeadMap(n int) []int32 {
	m := make([]int32, n)
	for i := range m {
		m[i] = -1
	}
	return m
}

// portQueues returns the receive and transmit queue of port id (spec 5.3.2).
func portQueues(id uint32) (rx, tx uint16) {
	if id == 0 {
		return 0, 1
	}
	rx = uint16(2 * (id + 1))
	return rx, rx + 1
}

// allocControlLocked allocates the control receive buffers (one page per
// descriptor, filling the queue as Linux does, up to maxRxBuffers) and the
// control transmit messages (8 bytes each, in one region).
func (d *Device) allocControlLocked() error {
	rq, tq := d.queues[controlRxQueue], d.queues[controlTxQueue]
	d.ctrlRxHead = newHeadMap(int(rq.Size()))
	for range min(int(rq.Size()), maxRxBuffers) {
		r, err := d.alloc.Alloc(bufSize, 8)
		if err != nil {
			return fmt.Errorf("control receive buffers: %w", err)
		}
		d.ctrlRxBufs = append(d.ctrlRxBufs, r)
	}
	n := int(tq.Size())
	r, err := d.alloc.Alloc(n*controlHeaderLen, 8)
	if err != nil {
		return fmt.Errorf("control transmit buffers: %w", err)
	}
	d.ctrlTxMem = r
	d.ctrlTxHead = newHeadMap(n)
	for i := n - 1; i >= 0; i-- {
		d.ctrlTxFree = append(d.ctrlTxFree, int32(i))
	}
	return nil
}

// fillControlRxLocked posts every control receive buffer.
func (d *Device) fillControlRxLocked() (notify bool, err error) {
	q := d.queues[controlRxQueue]
	for i, r := range d.ctrlRxBufs {
		d.seg[0] = ring.Segment{Addr: r.Addr(), Len: uint32(r.Len()), Write: true}
		head, err := q.Add(d.seg[:])
		if err != nil {
			return false, fmt.Errorf("post control buffer: %w", err)
		}
		d.ctrlRxHead[head] = int32(i)
	}
	return q.Publish(), nil
}

// singlePortLocked sets up port 0 of a device without MULTIPORT: a console
// port, open on both sides, with no control traffic (spec 5.3.5).
func (d *Device) singlePortLocked() error {
	s := d.slots[0]
	if s == nil {
		return fmt.Errorf("%w: port 0 queues", ErrNoQueue)
	}
	if err := d.ensureRxLocked(s); err != nil {
		return err
	}
	s.posting = true
	d.postRxLocked(s)
	d.kickRxLocked(s)
	p := s.port
	if p == nil || p.removed {
		p = newPort(d, s)
		s.port = p
		s.gen++
		d.emitLocked(p, PortAdded)
	}
	p.console, p.hostConnected, p.guestOpen, p.reannounce = true, true, true, false
	if d.sizeF {
		d.configSizeLocked()
	}
	return nil
}

// configSizeLocked reads cols and rows from the configuration space (valid
// with F_SIZE, spec 5.3.4) into port 0 of a device without MULTIPORT, as
// Linux does at a configuration change. With MULTIPORT sizes come in
// RESIZE messages and the fields are ignored.
func (d *Device) configSizeLocked() {
	s := d.slots[0]
	if s == nil || s.port == nil || s.port.removed {
		return
	}
	var b [4]byte
	if err := d.t.ReadConfig(0, b[:]); err != nil {
		d.log.Warn("virtio-console: read console size", "err", err)
		return
	}
	cols, rows := d.order.Uint16(b[0:]), d.order.Uint16(b[2:])
	if cols > maxConsoleDim || rows > maxConsoleDim {
		d.violationLocked(fmt.Errorf("%w: config console size %dx%d", ErrDeviceProtocolConsole, cols, rows), s.port)
		return
	}
	d.setSizeLocked(s.port, cols, rows)
}

// setSizeLocked records a console size and reports the change.
func (d *Device) setSizeLocked(p *Port, cols, rows uint16) {
	if cols == p.cols && rows == p.rows {
		return
	}
	p.cols, p.rows = cols, rows
	d.log.Debug("virtio-console: console size", "port", p.id, "cols", cols, "rows", rows)
	p.changedLocked()
	d.emitLocked(p, PortChanged)
}

// forgetInFlightLocked is the buffer side of a reset: posted buffers are
// the driver's again, in-flight transmissions are lost.
func (d *Device) forgetInFlightLocked() {
	for _, s := range d.slots {
		if s == nil {
			continue
		}
		if p := s.port; p != nil && !p.removed {
			d.dropInflightLocked(p, "device reset")
		}
		s.posting = false
		for i := range s.rxBufs {
			if s.rxBufs[i].state == rxPosted {
				s.rxBufs[i].state = rxFree
			}
		}
		for h := range s.rxByHead {
			s.rxByHead[h] = -1
		}
		s.gen++
		s.txFree = s.txFree[:0]
		for i := range s.txBufs {
			if !s.txBufs[i].owned {
				s.txFree = append(s.txFree, int32(i))
			}
		}
		for h := range s.txByHead {
			s.txByHead[h] = -1
		}
		s.injectedOut = 0
		if p := s.port; p != nil && !p.removed {
			if p.txInflight > 0 {
				p.txLost = true
			}
			p.txInflight = 0
			if d.multiport {
				p.reannounce = true
				if p.hostConnected {
					p.hostConnected = false
					p.changedLocked()
					d.emitLocked(p, PortChanged)
				}
			}
			p.wakeAll()
		}
	}
	for h := range d.ctrlRxHead {
		d.ctrlRxHead[h] = -1
	}
	d.ctrlTxFree = d.ctrlTxFree[:0]
	for i := len(d.ctrlTxHead) - 1; i >= 0; i-- {
		d.ctrlTxHead[i] = -1
		d.ctrlTxFree = append(d.ctrlTxFree, int32(i))
	}
	d.ctrlQueue = d.ctrlQueue[:0]
}

// dropUnannouncedLocked removes ports the device did not announce again
// after a reset (QEMU replays PORT_ADD synchronously on DEVICE_READY).
func (d *Device) dropUnannouncedLocked() {
	for _, s := range d.slots {
		if s != nil && s.port != nil && !s.port.removed && s.port.reannounce {
			d.infoLocked("virtio-console: port not re-announced after reset", "port", s.id)
			d.removePortLocked(s)
		}
	}
}

// --- events ---
