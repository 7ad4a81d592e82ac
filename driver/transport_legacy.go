package driver

import (
	"encoding/binary"
	"fmt"
	"time"
)

// Legacy I/O BAR0 registers (spec 4.1.4.10, VIRTIO-NOTES 3.1).
const (
	legacyHostFeatures  = 0  // 32, R
	legacyGuestFeatures = 4  // 32, R/W
	legacyQueuePFN      = 8  // 32, R/W
	legacyQueueNum      = 12 // 16, R
	legacyQueueSel      = 14 // 16, R/W
	legacyQueueNotify   = 16 // 16, W
	legacyStatus        = 18 // 8, R/W
	legacyISR           = 19 // 8, R (read clears)
	legacyConfigVector  = 20 // 16, only while MSI-X is enabled
	legacyQueueVector   = 22 // 16, only while MSI-X is enabled
	legacyConfig        = 20 // device config without MSI-X
	legacyConfigMSIX    = 24 // device config with MSI-X enabled

	legacyPageShift = 12 // QUEUE_PFN unit, and the legacy ring alignment
)

// legacy is the legacy (virtio 0.9.5) I/O BAR transport.
type legacy struct {
	bar          BAR
	cs           ConfigSpace
	msix         int // offset of the MSI-X capability, 0 if none
	resetTimeout time.Duration
}

func newLegacy(fn Function, caps pciCaps) (*legacy, error) {
	bar, err := fn.BAR(0)
	if err != nil {
		return nil, fmt.Errorf("%w: no modern capabilities and BAR0: %v", ErrNoTransport, err)
	}
	if bar.Len() < legacyConfig {
		return nil, fmt.Errorf("%w: BAR0 is %d bytes, the legacy header needs %d", ErrNoTransport, bar.Len(), legacyConfig)
	}
	return &legacy{bar: bar, cs: fn.Config(), msix: caps.msix, resetTimeout: resetTimeout}, nil
}

func (t *legacy) Legacy() bool { return true }

// msixOn reports whether MSI-X is enabled right now: the legacy layout
// depends on it (QEMU msix_enabled()).
func (t *legacy) msixOn() (bool, error) {
	on, err := msixEnabled(t.cs, t.msix)
	if err != nil {
		return false, fmt.Errorf("driver: transport: MSI-X state: %w", err)
	}
	return on, nil
}

func (t *legacy) Reset() error {
	if err := t.bar.Write8(legacyStatus, 0); err != nil {
		return fmt.Errorf("driver: transport: reset: %w", err)
	}
	return waitReset(func() (uint8, error) { return t.bar.Read8(legacyStatus) }, t.resetTimeout)
}

func (t *legacy) Status() (uint8, error) {
	s, err := t.bar.Read8(legacyStatus)
	if err != nil {
		return 0, fmt.Errorf("driver: transport: read status: %w", err)
	}
	return s, nil
}

func (t *legacy) AddStatus(bits uint8) error {
	s, err := t.Status()
	if err != nil {
		return err
	}
	if err := t.bar.Write8(legacyStatus, s|bits); err != nil {
		return fmt.Errorf("driver: transport: write status %#x: %w", s|bits, err)
	}
	return nil
}

func (t *legacy) DeviceFeatures() (uint64, error) {
	v, err := t.bar.Read32(legacyHostFeatures)
	if err != nil {
		return 0, fmt.Errorf("driver: transport: device features: %w", err)
	}
	return uint64(v), nil
}

func (t *legacy) SetDriverFeatures(f uint64) error {
	if f>>32 != 0 {
		return fmt.Errorf("%w: features %#x above bit 31 cannot be negotiated on the legacy interface", ErrFeatureMissing, f)
	}
	if err := t.bar.Write32(legacyGuestFeatures, uint32(f)); err != nil {
		return fmt.Errorf("driver: transport: driver features: %w", err)
	}
	return nil
}

func (t *legacy) QueueMax(q uint16) (uint16, error) {
	if err := t.bar.Write16(legacyQueueSel, q); err != nil {
		return 0, fmt.Errorf("driver: transport: select queue %d: %w", q, err)
	}
	n, err := t.bar.Read16(legacyQueueNum)
	if err != nil {
		return 0, fmt.Errorf("driver: transport: queue %d size: %w", q, err)
	}
	return n, nil
}

// SetupQueue activates queue q at the contiguous legacy ring s.Desc (spec
// 4.1.5.1.3.1). Legacy queues have a fixed size: s.Size must be 0 or equal
// QUEUE_NUM. QUEUE_PFN is never written with 0, which makes QEMU reset the
// whole device.
func (t *legacy) SetupQueue(q uint16, s QueueSetup) error {
	num, err := t.QueueMax(q)
	if err != nil {
		return err
	}
	if num == 0 {
		return fmt.Errorf("%w: queue %d has size 0", ErrNoQueue, q)
	}
	if s.Size != 0 && s.Size != num {
		return fmt.Errorf("%w: queue %d: legacy QUEUE_NUM is %d, size %d asked (legacy sizes are fixed)", ErrBadQueue, q, num, s.Size)
	}
	if num&(num-1) != 0 {
		return fmt.Errorf("%w: queue %d: QUEUE_NUM %d is not a power of two", ErrBadQueue, q, num)
	}
	if s.Desc == 0 || s.Desc%(1<<legacyPageShift) != 0 || s.Desc>>legacyPageShift > 0xffff_ffff {
		return fmt.Errorf("%w: queue %d: legacy ring address %#x must be non-zero, 4096-aligned and below 2^44", ErrBadQueue, q, s.Desc)
	}
	old, err := t.bar.Read32(legacyQueuePFN)
	if err != nil {
		return fmt.Errorf("driver: transport: queue %d PFN: %w", q, err)
	}
	if old != 0 {
		return fmt.Errorf("%w: queue %d already active (QUEUE_PFN %#x): reset first", ErrBadQueue, q, old)
	}
	on, err := t.msixOn()
	if err != nil {
		return err
	}
	if err := t.bar.Write32(legacyQueuePFN, uint32(s.Desc>>legacyPageShift)); err != nil {
		return fmt.Errorf("driver: transport: queue %d PFN: %w", q, err)
	}
	if on && s.Vector != NoVector {
		if err := t.bar.Write16(legacyQueueVector, s.Vector); err != nil {
			return fmt.Errorf("driver: transport: queue %d vector: %w", q, err)
		}
		got, err := t.bar.Read16(legacyQueueVector)
		if err != nil {
			return fmt.Errorf("driver: transport: queue %d vector: %w", q, err)
		}
		if got != s.Vector {
			return fmt.Errorf("%w: queue %d: wrote %d, read back %#x", ErrVectorRefused, q, s.Vector, got)
		}
	}
	return nil
}

func (t *legacy) Notify(q uint16) error {
	if err := t.bar.Write16(legacyQueueNotify, q); err != nil {
		return fmt.Errorf("driver: transport: notify queue %d: %w", q, err)
	}
	return nil
}

func (t *legacy) ISR() (uint8, error) {
	v, err := t.bar.Read8(legacyISR)
	if err != nil {
		return 0, fmt.Errorf("driver: transport: read ISR: %w", err)
	}
	return v, nil
}

// configBase is where device configuration starts: 24 while MSI-X is
// enabled, 20 otherwise (VIRTIO-NOTES 3.1). It is read on every access
// because enabling MSI-X moves it.
func (t *legacy) configBase() (uint64, error) {
	on, err := t.msixOn()
	if err != nil {
		return 0, err
	}
	if on {
		return legacyConfigMSIX, nil
	}
	return legacyConfig, nil
}

func (t *legacy) configRange(off, n int) (uint64, error) {
	base, err := t.configBase()
	if err != nil {
		return 0, err
	}
	if off < 0 || n < 0 || base+uint64(off)+uint64(n) > t.bar.Len() {
		return 0, fmt.Errorf("%w: [%d, +%d) beyond BAR0 (%d bytes, config at %d)", ErrConfigRange, off, n, t.bar.Len(), base)
	}
	return base + uint64(off), nil
}

// ReadConfig reads legacy device configuration, which is guest-native
// endian (spec 4.1.4.10): multi-byte fields land in p in native order.
func (t *legacy) ReadConfig(off int, p []byte) error {
	at, err := t.configRange(off, len(p))
	if err != nil {
		return err
	}
	if err := configAccess(t.bar, at, p, false, binary.NativeEndian); err != nil {
		return fmt.Errorf("driver: transport: read config %d+%d: %w", off, len(p), err)
	}
	return nil
}

func (t *legacy) WriteConfig(off int, p []byte) error {
	at, err := t.configRange(off, len(p))
	if err != nil {
		return err
	}
	if err := configAccess(t.bar, at, p, true, binary.NativeEndian); err != nil {
		return fmt.Errorf("driver: transport: write config %d+%d: %w", off, len(p), err)
	}
	return nil
}

// SetConfigVector programs MSI_CONFIG_VECTOR, which exists only while MSI-X
// is enabled; without MSI-X only NoVector is accepted (and nothing written).
func (t *legacy) SetConfigVector(v uint16) error {
	on, err := t.msixOn()
	if err != nil {
		return err
	}
	if !on {
		if v == NoVector {
			return nil
		}
		return fmt.Errorf("%w: config vector %d: MSI-X is not enabled", ErrVectorRefused, v)
	}
	if err := t.bar.Write16(legacyConfigVector, v); err != nil {
		return fmt.Errorf("driver: transport: config vector: %w", err)
	}
	got, err := t.bar.Read16(legacyConfigVector)
	if err != nil {
		return fmt.Errorf("driver: transport: config vector: %w", err)
	}
	if got != v {
		return fmt.Errorf("%w: config vector: wrote %d, read back %#x", ErrVectorRefused, v, got)
	}
	return nil
}
