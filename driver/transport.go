package driver

// API CONTRACT between the transport (modern capabilities or legacy I/O BAR)
// and the console protocol. The transport helper implements modern and
// legacy; the console code uses only this interface.

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
