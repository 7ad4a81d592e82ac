// Package driver brings up a virtio-console PCI function and runs the
// console protocol over it. It reaches the hardware only through the small
// interfaces in hw.go (Function, ConfigSpace, BAR, IRQ), which package uio
// implements for uio_pci_generic and VFIO and package virtiotest fakes for
// tests. It knows nothing of sockets, paths or how the function was bound.
//
// # Transport
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
// Both implement the transport interface in transport.go. The modern one
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
// negotiateFeatures runs steps 5–7 of initialisation: it accepts the
// caller's wanted bits that the device offers (plus VERSION_1 on the modern
// interface; never bit 30 or an unoffered bit), fails with ErrFeatureMissing
// when a required bit is not offered, sets FEATURES_OK and re-reads it
// (ErrFeaturesRefused). Every failure sets FAILED. The caller puts
// FeatureAccessPlatform in the wanted set when an IOMMU is in use.
//
// Tests run against virtiotest.Function. Because virtiotest cannot import
// this package, its methods return concrete types and
// transport_fake_test.go adapts it (fakeFunction, newFake); newFake fails
// the test on any register access QEMU would mishandle.
package driver
