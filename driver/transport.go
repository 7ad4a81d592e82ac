package driver

// The transport interface separates the two virtio-pci interfaces (modern
// capabilities, legacy I/O BAR) from the console protocol, which uses only
// this interface.
//
// newTransport walks the PCI capability list (status bit 4, pointer at 0x34
// with the low two bits masked, vendor capabilities 0x09, the first of each
// cfg_type, reserved cfg_type and BAR values ignored) and checks every
// structure against the length of its BAR: a malformed list or a capability
// that points outside its BAR is ErrBadCapability, never a panic or a later
// out-of-range access. With a COMMON_CFG capability it uses the modern
// interface (spec 4.1.4); otherwise the legacy I/O BAR0 (spec 4.1.4.10). It
// turns on decoding and Bus Master in the command register.
//
// Both implement the transport interface below. The modern one
// resets with a bounded poll (ErrResetTimeout), negotiates 64 feature bits
// through the select registers, programs queues (size, three addresses as
// low/high halves, MSI-X vector with read-back, queue_notify_off checked
// against the notify structure, then queue_enable = 1 — never 0), rings
// 16-bit doorbells and reads device configuration under the
// config_generation loop (ErrConfigUnstable after a bounded number of
// retries). The legacy one has 32 feature bits, a fixed QUEUE_NUM,
// QUEUE_PFN = address >> 12 (4096-aligned, below 2^44, never 0: QEMU resets
// the whole device on a 0) and device configuration at offset 20, or 24
// while the MSI-X capability's enable bit is set — read on every access,
// because enabling MSI-X moves it. Legacy configuration is guest-native
// endian; modern is little-endian.
//
// Tests run against virtiotest.Function. Because virtiotest cannot import
// this package, its methods return concrete types and
// transport_fake_test.go adapts it (fakeFunction, newFake); newFake fails
// the test on any register access QEMU would mishandle.

import (
	"fmt"
	"log/slog"
)

// Device status bits (spec 2.1).
const (
	StatusAcknowledge      = 1
	StatusDriver           = 2
	StatusDriverOK         = 4
	StatusFeaturesOK       = 8
	StatusDeviceNeedsReset = 64
	StatusFailed           = 128
)

// QueueSetup is what the transport programs for one queue.
type QueueSetup struct {
	Size                 uint16
	Desc, Driver, Device uint64 // legacy: Desc is the block, Driver/Device ignored
	Vector               uint16 // MSI-X vector, or NoVector
}

// NoVector is VIRTIO_MSI_NO_VECTOR.
const NoVector = 0xffff

// transport is a virtio-pci transport.
type transport interface {
	// Legacy reports whether this is the legacy I/O BAR interface (32-bit
	// features, no FEATURES_OK, QUEUE_PFN, guest-native config).
	Legacy() bool
	// Reset writes 0 to the status and waits (bounded) until it reads 0.
	Reset() error
	Status() (uint8, error)
	// AddStatus ORs bits into the status register.
	AddStatus(bits uint8) error
	DeviceFeatures() (uint64, error)
	SetDriverFeatures(f uint64) error
	// QueueMax returns the device's size for queue q (0: no such queue).
	QueueMax(q uint16) (uint16, error)
	// SetupQueue programs and enables queue q.
	SetupQueue(q uint16, s QueueSetup) error
	// Notify sends the available-buffer notification for queue q.
	Notify(q uint16) error
	// ISR reads (and so clears) the ISR byte.
	ISR() (uint8, error)
	// ReadConfig reads device-specific configuration bytes (modern: under the
	// config-generation loop; legacy: at offset 20 or 24).
	ReadConfig(off int, p []byte) error
	WriteConfig(off int, p []byte) error
	// SetConfigVector sets the MSI-X vector for config changes (NoVector: none).
	SetConfigVector(v uint16) error
}

// Transport-level feature bits (spec 6; VIRTIO-NOTES 6).
const (
	// FeatureVersion1 is VIRTIO_F_VERSION_1; a modern device requires it.
	FeatureVersion1 = uint64(1) << 32
	// FeatureAccessPlatform is VIRTIO_F_ACCESS_PLATFORM: device addresses go
	// through the platform IOMMU. Mandatory to accept when offered by QEMU
	// with iommu_platform=on.
	FeatureAccessPlatform = uint64(1) << 33
	// featureBad is bit 30, QEMU's legacy "bad feature" probe: never accepted.
	featureBad = uint64(1) << 30
)

// newTransport finds the virtio-pci interface of fn: the modern one when the
// function has a COMMON_CFG capability (spec 4.1.5.1.1.1), otherwise the
// legacy I/O BAR0. It enables decoding and Bus Master, but does not reset
// the device.
func newTransport(fn Function, log *slog.Logger) (transport, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cs := fn.Config()
	caps, err := readCaps(cs)
	if err != nil {
		return nil, fmt.Errorf("driver: transport: %w", err)
	}
	if caps.common != nil {
		t, err := newModern(fn, caps)
		if err != nil {
			return nil, fmt.Errorf("driver: transport: modern: %w", err)
		}
		if err := enableDevice(cs, false); err != nil {
			return nil, fmt.Errorf("driver: transport: enable device: %w", err)
		}
		log.Info("virtio transport", "interface", "modern",
			"common_bar", caps.common.bar, "notify_mult", caps.notify.mult)
		return t, nil
	}
	t, err := newLegacy(fn, caps)
	if err != nil {
		return nil, fmt.Errorf("driver: transport: legacy: %w", err)
	}
	if err := enableDevice(cs, true); err != nil {
		return nil, fmt.Errorf("driver: transport: enable device: %w", err)
	}
	log.Info("virtio transport", "interface", "legacy", "msix_cap", caps.msix != 0)
	return t, nil
}

// negotiateFeatures runs steps 5-7 of device initialisation (spec 3.1.1;
// legacy 3.1.2): it reads the device's features, accepts want ∩ offered
// (plus VERSION_1 on the modern interface), writes them and, on the modern
// interface, sets FEATURES_OK and checks that the device kept it. Bit 30 and
// unoffered bits are never accepted. A bit of required that the device does
// not offer, or a refused FEATURES_OK, sets FAILED and returns an error
// (ErrFeatureMissing, ErrFeaturesRefused).
//
// The caller must have set ACKNOWLEDGE and DRIVER, and must put
// FeatureAccessPlatform in want when it can honour it (an IOMMU is in use).
// A device that offers ACCESS_PLATFORM when want lacks it is refused with
// ErrNeedsIOMMU (QEMU would refuse FEATURES_OK anyway).
func negotiateFeatures(t transport, want, required uint64) (accepted uint64, err error) {
	fail := func(err error) (uint64, error) {
		if serr := t.AddStatus(StatusFailed); serr != nil {
			return 0, fmt.Errorf("%w (and setting FAILED: %v)", err, serr)
		}
		return 0, err
	}
	offered, err := t.DeviceFeatures()
	if err != nil {
		return 0, err
	}
	if t.Legacy() {
		// Only 32 feature bits exist on the legacy interface.
		want &= 0xffff_ffff
		if required>>32 != 0 {
			return fail(fmt.Errorf("driver: transport: negotiate: %w: %#x needs the modern interface", ErrFeatureMissing, required>>32<<32))
		}
	} else {
		if offered&FeatureVersion1 == 0 {
			return fail(fmt.Errorf("driver: transport: negotiate: %w: modern device does not offer VERSION_1 (offered %#x)", ErrFeatureMissing, offered))
		}
		want |= FeatureVersion1
	}
	if offered&FeatureAccessPlatform != 0 && want&FeatureAccessPlatform == 0 {
		// Spec 6.1: the device's addresses go through the platform's
		// translation (QEMU iommu_platform=on puts them behind the guest
		// IOMMU). The physical addresses of a binding without an IOMMU
		// would not reach our memory, and QEMU refuses FEATURES_OK anyway.
		return fail(fmt.Errorf("driver: transport: negotiate: %w: the device offers VIRTIO_F_ACCESS_PLATFORM, so its DMA goes through an IOMMU, but this binding gives it physical addresses; use --bind vfio with the IOMMU enabled (or start the device without iommu_platform)", ErrNeedsIOMMU))
	}
	if missing := required &^ offered; missing != 0 {
		return fail(fmt.Errorf("driver: transport: negotiate: %w: device offers %#x, lacks required %#x", ErrFeatureMissing, offered, missing))
	}
	accepted = want & offered &^ featureBad
	if err := t.SetDriverFeatures(accepted); err != nil {
		return fail(err)
	}
	if t.Legacy() {
		return accepted, nil
	}
	if err := t.AddStatus(StatusFeaturesOK); err != nil {
		return fail(err)
	}
	st, err := t.Status()
	if err != nil {
		return fail(err)
	}
	if st&StatusFeaturesOK == 0 {
		return fail(fmt.Errorf("driver: transport: negotiate: %w: accepted %#x of offered %#x", ErrFeaturesRefused, accepted, offered))
	}
	return accepted, nil
}
