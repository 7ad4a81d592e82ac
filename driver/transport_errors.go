package driver

import "errors"

// Errors of the virtio-pci transport. Callers branch on them with errors.Is;
// the returned errors wrap them with the operation and the values involved.
var (
	// ErrNoTransport means the function has neither the modern virtio
	// capabilities nor a usable legacy I/O BAR0.
	ErrNoTransport = errors.New("driver: transport: no virtio interface")
	// ErrBadCapability means the capability list or a virtio capability is
	// malformed: a loop, a truncated capability, or a structure that lies
	// outside its BAR.
	ErrBadCapability = errors.New("driver: transport: bad capability")
	// ErrResetTimeout means the device status did not read 0 after a reset.
	ErrResetTimeout = errors.New("driver: transport: reset did not complete")
	// ErrFeatureMissing means the device does not offer a feature the driver
	// requires.
	ErrFeatureMissing = errors.New("driver: transport: required feature not offered")
	// ErrNeedsIOMMU means the device offers VIRTIO_F_ACCESS_PLATFORM (its
	// addresses are translated by an IOMMU) but the function was opened
	// without one (uio, VFIO no-IOMMU), so the addresses the driver would
	// give it are not the ones the device would reach.
	ErrNeedsIOMMU = errors.New("driver: transport: device requires an IOMMU-backed binding")
	// ErrFeaturesRefused means the device cleared FEATURES_OK: it does not
	// accept the driver's feature subset.
	ErrFeaturesRefused = errors.New("driver: transport: device refused features")
	// ErrNoQueue means the queue does not exist (size 0 or index beyond
	// num_queues).
	ErrNoQueue = errors.New("driver: transport: no such queue")
	// ErrBadQueue means a queue's size or address cannot be programmed: size
	// not a power of two or larger than the device maximum, legacy size
	// mismatch, unaligned or too-high legacy ring address.
	ErrBadQueue = errors.New("driver: transport: bad queue setup")
	// ErrVectorRefused means an MSI-X vector did not read back as written.
	ErrVectorRefused = errors.New("driver: transport: MSI-X vector refused")
	// ErrConfigUnstable means config_generation kept changing while the
	// device configuration was read.
	ErrConfigUnstable = errors.New("driver: transport: device configuration keeps changing")
	// ErrConfigRange means a device-configuration access lies outside the
	// device's configuration structure.
	ErrConfigRange = errors.New("driver: transport: device configuration access out of range")
)
