// Package virtiotest is a fake virtio PCI function for tests: PCI config
// space with the virtio vendor capabilities, a modern BAR register file and a
// legacy I/O BAR, ISR read-to-clear, notifications, and interrupts through a
// real eventfd. Behind the registers sits a device Model; Console is a model
// that behaves like QEMU 7.2's virtio-serial, quirks included. Production
// code never imports it (layering_test.go).
package virtiotest

// Model and Bus separate the PCI function (registers) from device models.

import "github.com/vserial/vserial/ring/ringtest"

// Model is the virtio device behind a fake function.
type Model interface {
	// DeviceType is the virtio device id (3 = console).
	DeviceType() uint16
	// Features returns the device-specific and ring feature bits offered
	// (the function adds VERSION_1 on the modern interface).
	Features() uint64
	// QueueMax returns the size of queue q, 0 if it does not exist.
	QueueMax(q uint16) uint16
	// ReadConfig / WriteConfig access device-specific configuration.
	ReadConfig(off int, p []byte)
	WriteConfig(off int, p []byte)
	// Start is called when the driver sets DRIVER_OK.
	Start(b Bus)
	// Notify is called on an available-buffer notification for queue q.
	Notify(q uint16)
	// Reset is called when the driver resets the device.
	Reset()
}

// Bus is what a started model sees of its function.
type Bus interface {
	// Queue returns the device side of queue q, or nil if the driver did not
	// enable it.
	Queue(q uint16) ringtest.Queue
	// Negotiated returns the features the driver accepted.
	Negotiated() uint64
	// Interrupt raises a used-buffer interrupt for queue q (ISR bit 0).
	Interrupt(q uint16)
	// ConfigChanged raises a configuration-change interrupt (QEMU sets ISR
	// to 0x3) and bumps the config generation.
	ConfigChanged()
	// NeedsReset sets DEVICE_NEEDS_RESET and raises a config interrupt.
	NeedsReset()
}
