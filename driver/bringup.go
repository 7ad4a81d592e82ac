package driver

// Bring-up: the one sequence that both Open and recovery run (reset,
// features, queues, vectors, control buffers, DRIVER_OK, DEVICE_READY), and
// what a reset leaves behind.
//
// Open (device.go) runs the whole bring-up from this file: reset, ACKNOWLEDGE|DRIVER,
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
// control traffic (console_port.go). The steps it calls live with what
// they set up: queues and slots in queue.go, MSI-X vectors in vectors.go,
// the control receiveq in control_queue.go, waiting for the host's
// announcements in announce.go.

import (
	"errors"
	"fmt"
	"math/bits"
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
	// INDIRECT_DESC is taken when offered too, as Linux does, but it only
	// permits indirect tables: every chain the driver posts is one
	// segment (a receive buffer, or one copy of client bytes), and a
	// one-segment chain is never indirect, so queueConfig allocates no
	// tables (ring.Config.Indirect 0). docs/operating.md says why.
	want := FeatureConsoleMultiport | FeatureVersion1 | FeatureEventIdx | FeatureConsoleSize | FeatureConsoleEmergWrite | FeatureIndirectDesc
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
	answered := d.stats.ControlIn
	d.sendControlLocked(badPortID, ctrlDeviceReady, 1)
	// Bounded: a device that answers every answer must not hold bring-up
	// forever; what is left goes to the event loop.
	more, err := d.serviceControlPassesLocked(4*int(d.nslots) + maxControlPasses)
	if err != nil {
		return err
	}
	if wait := d.cfg.AnnounceWait; first && !more && wait >= 0 {
		if wait == 0 {
			wait = announceWait
		}
		if more, err = d.awaitAnnouncementsLocked(answered, wait); err != nil {
			return err
		}
	}
	if more {
		d.pendingWork = true
	}
	if !first {
		d.scheduleUnannouncedDropLocked()
	}
	return nil
}
