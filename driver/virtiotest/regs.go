package virtiotest

import (
	"encoding/binary"
	"fmt"

	"github.com/vserial/vserial/ring"
	"github.com/vserial/vserial/ring/ringtest"
)

// BAR is one register region of the fake function. Every access must have
// the width of the register it touches (spec 4.1.3.1); a wrong width is
// recorded in Violations (QEMU would mishandle it) and reads 0 / is dropped.
// A misaligned access or one outside the region is also an error.
type BAR struct {
	f    *Function
	idx  int
	size uint64
}

// Len returns the size of the region.
func (b *BAR) Len() uint64 { return b.size }

// Read8 reads one byte.
func (b *BAR) Read8(off uint64) (uint8, error) {
	v, err := b.f.access(b, off, 1, false, 0)
	return uint8(v), err
}

// Read16 reads 16 bits.
func (b *BAR) Read16(off uint64) (uint16, error) {
	v, err := b.f.access(b, off, 2, false, 0)
	return uint16(v), err
}

// Read32 reads 32 bits.
func (b *BAR) Read32(off uint64) (uint32, error) { return b.f.access(b, off, 4, false, 0) }

// Write8 writes one byte.
func (b *BAR) Write8(off uint64, v uint8) error {
	_, err := b.f.access(b, off, 1, true, uint32(v))
	return err
}

// Write16 writes 16 bits.
func (b *BAR) Write16(off uint64, v uint16) error {
	_, err := b.f.access(b, off, 2, true, uint32(v))
	return err
}

// Write32 writes 32 bits.
func (b *BAR) Write32(off uint64, v uint32) error {
	_, err := b.f.access(b, off, 4, true, v)
	return err
}

// Widths of the common configuration fields (VIRTIO-NOTES 2.2).
var commonWidth = map[uint64]int{
	0: 4, 4: 4, 8: 4, 12: 4, 16: 2, 18: 2, 20: 1, 21: 1, 22: 2, 24: 2, 26: 2, 28: 2, 30: 2,
	32: 4, 36: 4, 40: 4, 44: 4, 48: 4, 52: 4, 56: 2, 58: 2, 60: 2, 62: 2,
}

// Legacy header widths (VIRTIO-NOTES 3.1); 20 and 22 only with MSI-X on.
var legacyWidth = map[uint64]int{0: 4, 4: 4, 8: 4, 12: 2, 14: 2, 16: 2, 18: 1, 19: 1, 20: 2, 22: 2}

// access performs one register access. Model callbacks it causes run after
// the lock is dropped.
func (f *Function) access(b *BAR, off uint64, width int, write bool, v uint32) (uint32, error) {
	f.mu.Lock()
	kind := "read"
	if write {
		kind = "write"
	}
	if off%uint64(width) != 0 || off+uint64(width) > b.size {
		f.violate("BAR%d %s of %d bytes at %#x: misaligned or outside the %#x-byte region", b.idx, kind, width, off, b.size)
		f.mu.Unlock()
		return 0, fmt.Errorf("virtiotest: BAR%d: bad %d-byte %s at %#x", b.idx, width, kind, off)
	}
	// Device configuration goes to the model without the lock held.
	if cfgOff, ok := f.deviceConfigLocked(b.idx, off); ok {
		f.mu.Unlock()
		return f.modelConfig(cfgOff, width, write, v, b.idx == 0), nil
	}
	var after []func()
	var out uint32
	if b.idx == 0 {
		out, after = f.legacyLocked(off, width, write, v)
	} else {
		out, after = f.modernLocked(off, width, write, v)
	}
	f.mu.Unlock()
	for _, fn := range after {
		fn()
	}
	return out, nil
}

// deviceConfigLocked maps an access to a device-configuration offset.
func (f *Function) deviceConfigLocked(bar int, off uint64) (int, bool) {
	if bar == 0 {
		base := uint64(20)
		if f.msixOnLocked() {
			base = 24
		}
		if off >= base {
			return int(off - base), true
		}
		return 0, false
	}
	if off >= DeviceOffset && off < DeviceOffset+structLength {
		return int(off - DeviceOffset), true
	}
	return 0, false
}

// modelConfig reads or writes device configuration through the model: LE
// on the modern interface, guest-native (LE here) on the legacy one.
func (f *Function) modelConfig(off, width int, write bool, v uint32, legacy bool) uint32 {
	order := binary.ByteOrder(binary.LittleEndian)
	if legacy {
		order = binary.NativeEndian
	}
	var buf [4]byte
	p := buf[:width]
	if write {
		switch width {
		case 1:
			p[0] = uint8(v)
		case 2:
			order.PutUint16(p, uint16(v))
		default:
			order.PutUint32(p, v)
		}
		f.model.WriteConfig(off, p)
		return 0
	}
	f.model.ReadConfig(off, p)
	switch width {
	case 1:
		return uint32(p[0])
	case 2:
		return uint32(order.Uint16(p))
	}
	return order.Uint32(p)
}

func (f *Function) checkWidth(what string, widths map[uint64]int, off uint64, width int, write bool) bool {
	w, ok := widths[off]
	if !ok {
		return true // padding or unknown: QEMU ignores, so do we
	}
	if w != width {
		kind := "read"
		if write {
			kind = "write"
		}
		f.violate("%s %s at %#x is %d bytes wide, the register is %d", what, kind, off, width, w)
		return false
	}
	return true
}

func (f *Function) selQueueLocked() *queue {
	if int(f.queueSel) >= len(f.queues) {
		return nil
	}
	return &f.queues[f.queueSel]
}

func (f *Function) vectorOK(v uint16) uint16 {
	n := f.opts.MSIXVectors
	if n == 0 {
		n = 2
	}
	if lim := f.opts.Misbehave.VectorsAccepted; lim > 0 && v != NoVector && v >= lim {
		return NoVector
	}
	if f.opts.Misbehave.VectorRefused || v != NoVector && int(v) >= n {
		return NoVector
	}
	return v
}

func (f *Function) modernLocked(off uint64, width int, write bool, v uint32) (uint32, []func()) {
	switch {
	case off < structLength:
		if !f.checkWidth("common cfg", commonWidth, off, width, write) {
			return 0, nil
		}
		if write {
			return 0, f.commonWriteLocked(off, v)
		}
		return f.commonReadLocked(off), nil
	case off >= ISROffset && off < ISROffset+structLength:
		if width != 1 {
			f.violate("ISR access of %d bytes, must be 1", width)
			return 0, nil
		}
		if write || off != ISROffset {
			return 0, nil
		}
		return uint32(f.readISRLocked()), nil
	case off >= NotifyOffset:
		if !write {
			return 0, nil
		}
		if width != 2 {
			f.violate("notify write of %d bytes at %#x: without NOTIFICATION_DATA it is 16 bits", width, off)
			return 0, nil
		}
		// QEMU derives the queue from the address and ignores the value.
		rel := off - NotifyOffset
		if rel%NotifyMult != 0 {
			return 0, nil
		}
		return 0, f.notifyLocked(uint16(rel/NotifyMult), false)
	}
	return 0, nil
}

func (f *Function) readISRLocked() uint8 {
	v := f.isr
	f.isr = 0
	f.setIntxStatusLocked()
	return v
}

func (f *Function) commonReadLocked(off uint64) uint32 {
	q := f.selQueueLocked()
	qv := func(get func(*queue) uint32) uint32 {
		if q == nil {
			return 0
		}
		return get(q)
	}
	switch off {
	case 0:
		return f.dfSelect
	case 4:
		if f.dfSelect > 1 {
			return 0
		}
		return uint32(f.offered >> (32 * f.dfSelect))
	case 8:
		return f.gfSelect
	case 12:
		if f.gfSelect > 1 {
			return 0
		}
		return uint32(f.accepted >> (32 * f.gfSelect))
	case 16:
		return uint32(f.cfgVector)
	case 18:
		return uint32(f.numQueues)
	case 20:
		return uint32(f.status)
	case 21:
		if f.opts.Misbehave.UnstableConfigGeneration {
			f.generation++
		}
		return uint32(f.generation)
	case 22:
		return uint32(f.queueSel)
	case 24:
		return qv(func(q *queue) uint32 { return uint32(q.size) })
	case 26:
		return qv(func(q *queue) uint32 { return uint32(q.vector) })
	case 28:
		return qv(func(q *queue) uint32 {
			if q.enabled {
				return 1
			}
			return 0
		})
	case 30:
		return qv(func(*queue) uint32 {
			if f.opts.Misbehave.NotifyOffBeyondCap {
				return 1024 // 1024 × 4 = the whole notify structure: no room for 2 bytes
			}
			return uint32(f.queueSel) // QEMU: queue_notify_off = queue index
		})
	case 32, 36:
		return qv(func(q *queue) uint32 { return uint32(q.desc >> (8 * (off - 32))) })
	case 40, 44:
		return qv(func(q *queue) uint32 { return uint32(q.driver >> (8 * (off - 40))) })
	case 48, 52:
		return qv(func(q *queue) uint32 { return uint32(q.device >> (8 * (off - 48))) })
	}
	return 0
}

func set32(x *uint64, hi bool, v uint32) {
	if hi {
		*x = *x&0xffff_ffff | uint64(v)<<32
	} else {
		*x = *x&^0xffff_ffff | uint64(v)
	}
}

func (f *Function) commonWriteLocked(off uint64, v uint32) []func() {
	q := f.selQueueLocked()
	live := func(field string) bool {
		if q == nil {
			return true
		}
		if q.enabled {
			f.violate("write to %s of queue %d after it was enabled", field, f.queueSel)
			return true
		}
		return false
	}
	switch off {
	case 0:
		f.dfSelect = v
	case 8:
		f.gfSelect = v
	case 12:
		if f.gfSelect > 1 {
			if v != 0 {
				f.violate("driver_feature word %d = %#x: no such features", f.gfSelect, v)
			}
			return nil
		}
		set32(&f.accepted, f.gfSelect == 1, v)
	case 16:
		f.cfgVector = f.vectorOK(uint16(v))
	case 20:
		return f.writeStatusLocked(uint8(v), false)
	case 22:
		f.queueSel = uint16(v)
	case 24:
		if live("queue_size") {
			return nil
		}
		n := uint16(v)
		if n == 0 || n > q.max || n&(n-1) != 0 {
			f.violate("queue %d: queue_size %d (max %d) is not a power of two in 1..max", f.queueSel, n, q.max)
		}
		q.size = n
	case 26:
		if q != nil {
			q.vector = f.vectorOK(uint16(v))
		}
	case 28:
		if v != 1 {
			f.violate("queue %d: wrote %d to queue_enable; only 1 is allowed (QEMU: device error)", f.queueSel, v)
			return nil
		}
		if live("queue_enable") {
			return nil
		}
		layout := ring.Modern
		if f.accepted&featRingPacked != 0 {
			layout = ring.PackedRing
		}
		f.enableQueueLocked(f.queueSel, layout)
	case 32, 36:
		if !live("queue_desc") {
			set32(&q.desc, off == 36, v)
		}
	case 40, 44:
		if !live("queue_driver") {
			set32(&q.driver, off == 44, v)
		}
	case 48, 52:
		if !live("queue_device") {
			set32(&q.device, off == 52, v)
		}
	}
	return nil
}

func (f *Function) enableQueueLocked(qi uint16, layout ring.Layout) {
	q := &f.queues[qi]
	if q.max == 0 {
		f.violate("queue %d: enabled but it does not exist (size 0)", qi)
		return
	}
	dev, err := ringtest.NewQueue(f.heap, ringtest.Config{
		Size:     q.size,
		Layout:   layout,
		EventIdx: f.accepted&featEventIdx != 0,
		Indirect: f.accepted&featIndirect != 0,
		Desc:     q.desc, Driver: q.driver, Device: q.device,
	})
	if err != nil {
		f.violate("queue %d: enable: %v", qi, err)
		return
	}
	q.dev = dev
	q.enabled = true
}

// mandatoryLocked returns the features the driver must accept.
func (f *Function) mandatoryLocked() uint64 {
	m := f.mandatory
	if f.opts.IOMMUPlatform {
		m |= featAccessPlatform
	}
	return m
}

// featuresOKLocked decides whether the device keeps FEATURES_OK.
func (f *Function) featuresOKLocked() bool {
	if f.opts.Misbehave.RefuseFeaturesOK {
		return false
	}
	if extra := f.accepted &^ f.offered; extra != 0 {
		f.violate("driver accepted unoffered features %#x (offered %#x)", extra, f.offered)
		return false
	}
	if f.accepted&featVersion1 == 0 {
		return false
	}
	return f.mandatoryLocked()&^f.accepted == 0
}

// writeStatusLocked handles a status write on either interface.
func (f *Function) writeStatusLocked(v uint8, legacy bool) []func() {
	if v == 0 {
		if f.opts.Misbehave.ResetNeverCompletes {
			return nil
		}
		return f.deviceResetLocked()
	}
	old := f.status
	if cleared := old &^ v &^ stNeedsReset; cleared != 0 {
		f.violate("status write %#x clears bits %#x; only a reset may clear status bits", v, cleared)
	}
	if !legacy {
		if v&stFeaturesOK != 0 && old&stFeaturesOK == 0 && !f.featuresOKLocked() {
			return nil // QEMU ignores the whole status write
		}
		if v&stDriverOK != 0 && v&stFeaturesOK == 0 {
			f.violate("DRIVER_OK set without FEATURES_OK on the modern interface")
		}
	}
	if legacy && v == stAcknowledge|stDriver {
		f.cfg[0x04] |= cmdBusMaster // QEMU: old-Linux workaround forces Bus Master on
	}
	f.status = v | old&stNeedsReset
	if v&stDriverOK != 0 && old&stDriverOK == 0 {
		b := &bus{f: f}
		return []func(){func() { f.model.Start(b) }}
	}
	return nil
}

func (f *Function) deviceResetLocked() []func() {
	f.resets++
	f.resetLocked()
	return []func(){f.model.Reset}
}

func (f *Function) notifyLocked(q uint16, legacy bool) []func() {
	if !legacy && f.status&stDriverOK == 0 {
		f.violate("notify of queue %d before DRIVER_OK", q)
	}
	f.notifies = append(f.notifies, q)
	if int(q) >= len(f.queues) || !f.queues[q].enabled {
		return nil // QEMU ignores a kick for a queue without a ring
	}
	return []func(){func() { f.model.Notify(q) }}
}

func (f *Function) legacyLocked(off uint64, width int, write bool, v uint32) (uint32, []func()) {
	msix := f.msixOnLocked()
	if !f.checkWidth("legacy header", legacyWidth, off, width, write) {
		return 0, nil
	}
	q := f.selQueueLocked()
	if !write {
		switch off {
		case 0:
			return uint32(f.modelFeatures) | uint32(featNotifyOnEmpty|featAnyLayout), nil
		case 4:
			return uint32(f.accepted), nil
		case 8:
			if q == nil {
				return 0, nil
			}
			return q.pfn, nil
		case 12:
			if q == nil {
				return 0, nil
			}
			return uint32(q.max), nil
		case 14:
			return uint32(f.queueSel), nil
		case 18:
			return uint32(f.status), nil
		case 19:
			return uint32(f.readISRLocked()), nil
		case 20:
			if msix {
				return uint32(f.cfgVector), nil
			}
		case 22:
			if msix && q != nil {
				return uint32(q.vector), nil
			}
			if msix {
				return NoVector, nil
			}
		}
		return 0, nil
	}
	switch off {
	case 4:
		offered := f.modelFeatures&0xffff_ffff | featNotifyOnEmpty | featAnyLayout
		if uint64(v)&featBad != 0 {
			f.violate("legacy driver accepted bit 30 (QEMU's bad-feature probe)")
		}
		if extra := uint64(v) &^ offered; extra != 0 {
			f.violate("driver accepted unoffered features %#x (offered %#x)", extra, offered)
		}
		f.accepted = uint64(v)
	case 8:
		if v == 0 {
			f.violate("QUEUE_PFN 0 written for queue %d: QEMU resets the whole device", f.queueSel)
			return 0, f.deviceResetLocked()
		}
		if q == nil || q.max == 0 {
			return 0, nil
		}
		if q.enabled {
			f.violate("QUEUE_PFN rewritten for live queue %d", f.queueSel)
			return 0, nil
		}
		q.pfn = v
		q.desc = uint64(v) << 12
		q.size = q.max
		f.enableQueueLocked(f.queueSel, ring.Legacy)
	case 14:
		f.queueSel = uint16(v)
	case 16:
		return 0, f.notifyLocked(uint16(v), true)
	case 18:
		return 0, f.writeStatusLocked(uint8(v), true)
	case 20:
		if msix {
			f.cfgVector = f.vectorOK(uint16(v))
		}
	case 22:
		if msix && q != nil {
			q.vector = f.vectorOK(uint16(v))
		}
	}
	return 0, nil
}
