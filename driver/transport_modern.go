package driver

import (
	"encoding/binary"
	"fmt"
	"time"
)

// Offsets in the common configuration structure (spec 4.1.4.3,
// VIRTIO-NOTES 2.2).
const (
	commonDFSelect     = 0  // 32: device_feature_select
	commonDF           = 4  // 32: device_feature
	commonGFSelect     = 8  // 32: driver_feature_select
	commonGF           = 12 // 32: driver_feature
	commonMSIX         = 16 // 16: config_msix_vector
	commonNumQ         = 18 // 16: num_queues
	commonStatus       = 20 // 8: device_status
	commonCfgGen       = 21 // 8: config_generation
	commonQSelect      = 22 // 16: queue_select
	commonQSize        = 24 // 16: queue_size
	commonQMSIX        = 26 // 16: queue_msix_vector
	commonQEnable      = 28 // 16: queue_enable
	commonQNotifyOff   = 30 // 16: queue_notify_off
	commonQDescLo      = 32 // 32
	commonQDescHi      = 36 // 32
	commonQDriverLo    = 40 // 32
	commonQDriverHi    = 44 // 32
	commonQDeviceLo    = 48 // 32
	commonQDeviceHi    = 52 // 32
	commonCfgMinLength = 56 // the virtio 1.0 part
)

// resetTimeout bounds the wait for a reset to complete. QEMU resets
// synchronously; a device that takes longer than this is broken.
const resetTimeout = time.Second

// configRetries bounds the config_generation loop (spec 2.5). QEMU bumps the
// generation only on a config-change notification.
const configRetries = 64

// region is a structure inside a BAR.
type region struct {
	bar    BAR
	off    uint64
	length uint64
}

// modern is the virtio 1.x PCI transport (spec 4.1.4).
type modern struct {
	common, notify, isr, device region
	hasDevice                   bool
	mult                        uint64
	numQueues                   uint16
	notifyAt                    map[uint16]uint64 // queue → doorbell offset in notify.bar
	resetTimeout                time.Duration
}

// mapCap resolves a capability's structure in its BAR and checks that it
// lies inside the BAR and is at least min bytes long.
func mapCap(fn Function, c *virtioCap, name string, min uint64) (region, error) {
	bar, err := fn.BAR(int(c.bar))
	if err != nil {
		return region{}, fmt.Errorf("%s capability: BAR%d: %w", name, c.bar, err)
	}
	off, n, size := uint64(c.offset), uint64(c.length), bar.Len()
	if n < min {
		return region{}, fmt.Errorf("%w: %s capability length %#x, need at least %#x", ErrBadCapability, name, n, min)
	}
	if off > size || n > size-off {
		return region{}, fmt.Errorf("%w: %s capability [%#x, +%#x) lies outside BAR%d (%#x bytes)", ErrBadCapability, name, off, n, c.bar, size)
	}
	return region{bar: bar, off: off, length: n}, nil
}

func newModern(fn Function, caps pciCaps) (*modern, error) {
	if caps.notify == nil || caps.isr == nil {
		return nil, fmt.Errorf("%w: COMMON_CFG present but NOTIFY_CFG or ISR_CFG missing", ErrBadCapability)
	}
	t := &modern{notifyAt: make(map[uint16]uint64), resetTimeout: resetTimeout}
	var err error
	if t.common, err = mapCap(fn, caps.common, "common", commonCfgMinLength); err != nil {
		return nil, err
	}
	if t.common.off%4 != 0 {
		return nil, fmt.Errorf("%w: common capability offset %#x not 4-aligned", ErrBadCapability, t.common.off)
	}
	if t.notify, err = mapCap(fn, caps.notify, "notify", 2); err != nil {
		return nil, err
	}
	if t.notify.off%2 != 0 {
		return nil, fmt.Errorf("%w: notify capability offset %#x not 2-aligned", ErrBadCapability, t.notify.off)
	}
	t.mult = uint64(caps.notify.mult)
	if t.mult%2 != 0 {
		return nil, fmt.Errorf("%w: notify_off_multiplier %d is odd", ErrBadCapability, t.mult)
	}
	if t.isr, err = mapCap(fn, caps.isr, "ISR", 1); err != nil {
		return nil, err
	}
	if caps.device != nil {
		if t.device, err = mapCap(fn, caps.device, "device", 0); err != nil {
			return nil, err
		}
		if t.device.off%4 != 0 {
			return nil, fmt.Errorf("%w: device capability offset %#x not 4-aligned", ErrBadCapability, t.device.off)
		}
		t.hasDevice = true
	}
	if t.numQueues, err = t.common.bar.Read16(t.common.off + commonNumQ); err != nil {
		return nil, fmt.Errorf("read num_queues: %w", err)
	}
	return t, nil
}

func (t *modern) c8(off uint64) (uint8, error)   { return t.common.bar.Read8(t.common.off + off) }
func (t *modern) c16(off uint64) (uint16, error) { return t.common.bar.Read16(t.common.off + off) }
func (t *modern) c32(off uint64) (uint32, error) { return t.common.bar.Read32(t.common.off + off) }
func (t *modern) w8(off uint64, v uint8) error   { return t.common.bar.Write8(t.common.off+off, v) }
func (t *modern) w16(off uint64, v uint16) error { return t.common.bar.Write16(t.common.off+off, v) }
func (t *modern) w32(off uint64, v uint32) error { return t.common.bar.Write32(t.common.off+off, v) }

// w64 writes a 64-bit field as two 32-bit halves, low first (spec 4.1.3.1).
func (t *modern) w64(off uint64, v uint64) error {
	if err := t.w32(off, uint32(v)); err != nil {
		return err
	}
	return t.w32(off+4, uint32(v>>32))
}

func (t *modern) Legacy() bool { return false }

// NumQueues returns num_queues as read when the transport was created.
func (t *modern) NumQueues() uint16 { return t.numQueues }

// Reset writes 0 to device_status and polls until it reads 0 (spec 2.4,
// 4.1.4.3.2), sleeping between polls as Linux does, for at most
// t.resetTimeout.
func (t *modern) Reset() error {
	if err := t.w8(commonStatus, 0); err != nil {
		return fmt.Errorf("driver: transport: reset: %w", err)
	}
	clear(t.notifyAt)
	return waitReset(func() (uint8, error) { return t.c8(commonStatus) }, t.resetTimeout)
}

// waitReset polls status until it reads 0, for at most limit.
func waitReset(status func() (uint8, error), limit time.Duration) error {
	deadline := time.Now().Add(limit)
	sleep := 100 * time.Microsecond
	for {
		s, err := status()
		if err != nil {
			return fmt.Errorf("driver: transport: reset: %w", err)
		}
		if s == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: status still %#x after %v", ErrResetTimeout, s, limit)
		}
		time.Sleep(sleep)
		sleep = min(2*sleep, 10*time.Millisecond)
	}
}

func (t *modern) Status() (uint8, error) {
	s, err := t.c8(commonStatus)
	if err != nil {
		return 0, fmt.Errorf("driver: transport: read status: %w", err)
	}
	return s, nil
}

func (t *modern) AddStatus(bits uint8) error {
	s, err := t.Status()
	if err != nil {
		return err
	}
	if err := t.w8(commonStatus, s|bits); err != nil {
		return fmt.Errorf("driver: transport: write status %#x: %w", s|bits, err)
	}
	return nil
}

func (t *modern) DeviceFeatures() (uint64, error) {
	var f uint64
	for w := uint32(0); w < 2; w++ {
		if err := t.w32(commonDFSelect, w); err != nil {
			return 0, fmt.Errorf("driver: transport: device features: %w", err)
		}
		v, err := t.c32(commonDF)
		if err != nil {
			return 0, fmt.Errorf("driver: transport: device features: %w", err)
		}
		f |= uint64(v) << (32 * w)
	}
	return f, nil
}

func (t *modern) SetDriverFeatures(f uint64) error {
	for w := uint32(0); w < 2; w++ {
		if err := t.w32(commonGFSelect, w); err != nil {
			return fmt.Errorf("driver: transport: driver features: %w", err)
		}
		if err := t.w32(commonGF, uint32(f>>(32*w))); err != nil {
			return fmt.Errorf("driver: transport: driver features: %w", err)
		}
	}
	return nil
}

func (t *modern) selectQueue(q uint16) error {
	if q >= t.numQueues {
		return fmt.Errorf("%w: queue %d, device has %d", ErrNoQueue, q, t.numQueues)
	}
	if err := t.w16(commonQSelect, q); err != nil {
		return fmt.Errorf("driver: transport: select queue %d: %w", q, err)
	}
	return nil
}

func (t *modern) QueueMax(q uint16) (uint16, error) {
	if q >= t.numQueues {
		return 0, nil
	}
	if err := t.selectQueue(q); err != nil {
		return 0, err
	}
	n, err := t.c16(commonQSize)
	if err != nil {
		return 0, fmt.Errorf("driver: transport: queue %d size: %w", q, err)
	}
	return n, nil
}

// SetupQueue programs queue q (spec 4.1.5.1.3, VIRTIO-NOTES 2.6) and enables
// it. A zero s.Size means the device's maximum.
func (t *modern) SetupQueue(q uint16, s QueueSetup) error {
	if err := t.selectQueue(q); err != nil {
		return err
	}
	max, err := t.c16(commonQSize)
	if err != nil {
		return fmt.Errorf("driver: transport: queue %d size: %w", q, err)
	}
	if max == 0 {
		return fmt.Errorf("%w: queue %d has size 0", ErrNoQueue, q)
	}
	size := s.Size
	if size == 0 {
		size = max
	}
	if size > max || size&(size-1) != 0 {
		return fmt.Errorf("%w: queue %d: size %d (device maximum %d) is not a power of two no larger than the maximum", ErrBadQueue, q, size, max)
	}
	if size != max {
		if err := t.w16(commonQSize, size); err != nil {
			return fmt.Errorf("driver: transport: queue %d size: %w", q, err)
		}
	}
	for _, a := range []struct {
		off  uint64
		addr uint64
	}{{commonQDescLo, s.Desc}, {commonQDriverLo, s.Driver}, {commonQDeviceLo, s.Device}} {
		if err := t.w64(a.off, a.addr); err != nil {
			return fmt.Errorf("driver: transport: queue %d address: %w", q, err)
		}
	}
	if s.Vector != NoVector {
		if err := t.w16(commonQMSIX, s.Vector); err != nil {
			return fmt.Errorf("driver: transport: queue %d vector: %w", q, err)
		}
		got, err := t.c16(commonQMSIX)
		if err != nil {
			return fmt.Errorf("driver: transport: queue %d vector: %w", q, err)
		}
		if got != s.Vector {
			return fmt.Errorf("%w: queue %d: wrote %d, read back %#x", ErrVectorRefused, q, s.Vector, got)
		}
	}
	noff, err := t.c16(commonQNotifyOff)
	if err != nil {
		return fmt.Errorf("driver: transport: queue %d notify_off: %w", q, err)
	}
	// The device guarantees cap.length >= notify_off*multiplier + 2 (spec
	// 4.1.4.4); a device that breaks it would have us write outside the
	// structure.
	rel := uint64(noff) * t.mult
	if rel+2 > t.notify.length {
		return fmt.Errorf("%w: queue %d: notify_off %d × multiplier %d + 2 exceeds the notify structure (%#x bytes)", ErrBadCapability, q, noff, t.mult, t.notify.length)
	}
	if err := t.w16(commonQEnable, 1); err != nil {
		return fmt.Errorf("driver: transport: queue %d enable: %w", q, err)
	}
	t.notifyAt[q] = t.notify.off + rel
	return nil
}

// Notify writes the queue index, 16 bits, to the queue's doorbell (spec
// 4.1.5.2; no NOTIFICATION_DATA).
func (t *modern) Notify(q uint16) error {
	at, ok := t.notifyAt[q]
	if !ok {
		return fmt.Errorf("%w: notify queue %d: not set up", ErrNoQueue, q)
	}
	if err := t.notify.bar.Write16(at, q); err != nil {
		return fmt.Errorf("driver: transport: notify queue %d: %w", q, err)
	}
	return nil
}

func (t *modern) ISR() (uint8, error) {
	v, err := t.isr.bar.Read8(t.isr.off)
	if err != nil {
		return 0, fmt.Errorf("driver: transport: read ISR: %w", err)
	}
	return v, nil
}

// ReadConfig reads device configuration bytes, little-endian as the device
// presents them, retrying while config_generation changes (spec 2.5).
func (t *modern) ReadConfig(off int, p []byte) error {
	if err := t.checkConfig(off, len(p)); err != nil {
		return err
	}
	for range configRetries {
		g1, err := t.c8(commonCfgGen)
		if err != nil {
			return fmt.Errorf("driver: transport: config generation: %w", err)
		}
		if err := configAccess(t.device.bar, t.device.off+uint64(off), p, false, binary.LittleEndian); err != nil {
			return fmt.Errorf("driver: transport: read config %d+%d: %w", off, len(p), err)
		}
		g2, err := t.c8(commonCfgGen)
		if err != nil {
			return fmt.Errorf("driver: transport: config generation: %w", err)
		}
		if g1 == g2 {
			return nil
		}
	}
	return fmt.Errorf("%w: generation changed on %d consecutive reads", ErrConfigUnstable, configRetries)
}

func (t *modern) WriteConfig(off int, p []byte) error {
	if err := t.checkConfig(off, len(p)); err != nil {
		return err
	}
	if err := configAccess(t.device.bar, t.device.off+uint64(off), p, true, binary.LittleEndian); err != nil {
		return fmt.Errorf("driver: transport: write config %d+%d: %w", off, len(p), err)
	}
	return nil
}

func (t *modern) checkConfig(off, n int) error {
	if !t.hasDevice {
		return fmt.Errorf("%w: device has no DEVICE_CFG capability", ErrConfigRange)
	}
	if off < 0 || n < 0 || uint64(off)+uint64(n) > t.device.length {
		return fmt.Errorf("%w: [%d, +%d) of %d bytes", ErrConfigRange, off, n, t.device.length)
	}
	return nil
}

func (t *modern) SetConfigVector(v uint16) error {
	if err := t.w16(commonMSIX, v); err != nil {
		return fmt.Errorf("driver: transport: config vector: %w", err)
	}
	got, err := t.c16(commonMSIX)
	if err != nil {
		return fmt.Errorf("driver: transport: config vector: %w", err)
	}
	if got != v {
		return fmt.Errorf("%w: config vector: wrote %d, read back %#x", ErrVectorRefused, v, got)
	}
	return nil
}

// configAccess moves p to or from device configuration at off in bar, using
// the widest naturally aligned access (4, 2 or 1 bytes) at each position, so
// that a field read on its own is one access of its own width (spec
// 4.1.3.1). order is the byte order of the configuration (little-endian for
// modern, guest-native for legacy).
func configAccess(bar BAR, off uint64, p []byte, write bool, order binary.ByteOrder) error {
	for i := 0; i < len(p); {
		at := off + uint64(i)
		rest := len(p) - i
		var err error
		switch {
		case at%4 == 0 && rest >= 4:
			if write {
				err = bar.Write32(at, order.Uint32(p[i:]))
			} else {
				var v uint32
				v, err = bar.Read32(at)
				order.PutUint32(p[i:], v)
			}
			i += 4
		case at%2 == 0 && rest >= 2:
			if write {
				err = bar.Write16(at, order.Uint16(p[i:]))
			} else {
				var v uint16
				v, err = bar.Read16(at)
				order.PutUint16(p[i:], v)
			}
			i += 2
		default:
			if write {
				err = bar.Write8(at, p[i])
			} else {
				p[i], err = bar.Read8(at)
			}
			i++
		}
		if err != nil {
			return err
		}
	}
	return nil
}
