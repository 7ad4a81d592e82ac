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
// FeatureAccessPlatform in the wanted set when an IOMMU is in use; a device
// that offers it to a caller without an IOMMU (uio, VFIO no-IOMMU) is
// refused with ErrNeedsIOMMU, since its DMA would be translated by an IOMMU
// while the driver hands it physical addresses.
//
// Ring layout: bring-up adds FeatureRingPacked (VIRTIO_F_RING_PACKED, bit
// 34) to the wanted set unless Config.Ring is RingSplit, and to the
// required set for RingPacked; the legacy interface's 32 bits never carry
// it. When it is negotiated every queue — data, control, after a reset and
// for hot-plugged ports — is a ring.Packed (newVirtqueue): one allocation
// with the descriptor ring 16-aligned and the driver and device event
// suppression words 4-aligned after it (spec 2.8.10.1), programmed as
// queue_desc, queue_driver and queue_device. Nothing above the virtqueue
// interface knows the layout.
//
// Tests run against virtiotest.Function. Because virtiotest cannot import
// this package, its methods return concrete types and
// transport_fake_test.go adapts it (fakeFunction, newFake); newFake fails
// the test on any register access QEMU would mishandle.
//
// # Console protocol
//
// Open (device.go) runs the whole bring-up: reset, ACKNOWLEDGE|DRIVER,
// features (MULTIPORT, VERSION_1, EVENT_IDX, F_SIZE and EMERG_WRITE when
// offered; ACCESS_PLATFORM, required, when the function is behind an IOMMU),
// max_nr_ports (0 with MULTIPORT fails Open; capped at 0x8000, at the
// 16-bit queue numbers and at Config.MaxPorts), every queue of every
// served port before DRIVER_OK, the control receiveq filled with 4096-byte
// buffers, then DEVICE_READY(0xffffffff, 1). QEMU replays PORT_ADD for
// every port on DEVICE_READY and answers synchronously, so Open returns
// with the cold-plugged ports known; every port is also reported on Events.
// Without MULTIPORT there is one console port 0 on queues 0/1 and no
// control traffic.
//
// Control messages (control.go, event.go) are parsed as untrusted input:
// shorter than 8 bytes, an id ≥ max_nr_ports, an event for a port that does
// not exist, a name that is empty, longer than MaxNameLen, not UTF-8, or
// that contains '/' or NUL or is "." or ".." (names become socket names;
// QEMU's trailing NUL is accepted) are counted as violations and ignored;
// unknown event codes are counted and ignored. Each control receive buffer
// is re-posted right after its message is handled, and replies are sent one
// at a time, after the re-post: QEMU answers PORT_READY with up to three
// messages and drops those that find no buffer, so with one message in
// flight none is lost even with hundreds of ports. PORT_ADD posts the
// port's receive buffers and answers PORT_READY(1) (PORT_READY(0) if its
// buffers cannot be allocated; nothing for ids beyond the cap, which are
// logged); a duplicate is re-acknowledged like Linux does. CONSOLE_PORT is
// answered with PORT_OPEN(1). PORT_NAME is stored once. PORT_OPEN from the
// device sets HostConnected. RESIZE (console ports only) is applied only
// with F_SIZE negotiated, as Linux does, parsed in the order
// Config.ResizeOrder names (sizes above 10000 are violations), and surfaced
// by Port.Size and Changed. Without MULTIPORT the size of port 0 is the
// cols/rows configuration fields (F_SIZE), read at bring-up and on every
// configuration interrupt. QEMU 7.2 offers neither. EmergencyWrite writes
// bytes through the emerg_wr configuration field (EMERG_WRITE): no queue or
// interrupt is involved, so it serves as a last-gasp channel even after
// the device failed. PORT_REMOVE
// wakes readers and writers with ErrPortRemoved, forgets in-flight
// transmissions and discards unread data; the receive buffers stay posted
// in the still-live queue (they belong to the port id, port.go's slot) and
// serve the id again when it is re-plugged.
//
// Data (port.go) moves with one copy on each side: Recv hands the device's
// receive buffers straight to an io.Writer, Send reads straight into a
// transmit buffer (32 KiB by default, Config.TxBufferSize), and several
// transmit buffers (Config.TxBuffers) are in flight at once. A writer that
// is a BuffersWriter gets every filled receive buffer in one call (writev),
// a reader that is a BuffersReader fills every free transmit buffer in one
// call (readv) while the data streams, and each batch is published with one
// kick. Transmit interrupts are asked for only while a writer waits for a
// buffer or a Flush for the device; receive interrupts stay on, so bytes
// from the host always wake the event loop. (Turning them off while a
// reader streams was tried and reverted: a port then stalled in a guest
// test.) Under INTx every interrupt is a uio wake-up, an ISR read and a
// config write, so these matter for throughput. Send waits while the host side of a
// non-console port is disconnected, since QEMU discards such bytes. The
// steady-state data path makes no allocations.
//
// Two ways to drive a device. By default one goroutine (event.go) waits in
// IRQ.Wait, reads the ISR for INTx, unmasks, and drains every queue; idle,
// it costs nothing. With Config.ExternalLoop the driver starts no goroutine
// and offers its poll face instead (poll.go): a loop that owns the
// interrupt descriptors (IRQFDs, from a PollIRQ) calls HandleIRQ, Poll,
// Disarm and Arm (NAPI: data interrupts off while it works, re-armed and
// re-checked before it sleeps; INTx masked until then), and moves bytes
// with RecvTo and SendFrom, which do the caller's non-blocking vectored
// I/O under the driver's lock; package pump is that loop. Port events are
// coalesced (one PortChanged per port waits at a time; PortAdded and
// PortRemoved are never dropped), device-driven log lines are rate-limited
// (ratelog.go), and control messages are copied out of device memory
// before they are parsed. With MSI-X,
// vector 0 carries configuration changes and both control queues, and the
// data queues of port id p sit on vector 1 + p mod (n-1) (setupVectors,
// queueVector): with QEMU's default of two vectors all data shares vector
// 1, with more each port up to n-1 has its own; one vector carries
// everything. When the IRQ is a VectorIRQ (uio's VFIO MSI-X is) the loop
// learns which vectors fired and services only their ports, reads the
// device status only when vector 0 fired, and runs the control queues
// only then; an IRQ that cannot tell services everything, as INTx does. A ring protocol
// violation, a control queue that breaks, DEVICE_NEEDS_RESET or a device
// that drops DRIVER_OK resets the device and runs the bring-up again on
// the same memory: ports that come back with the same id and name keep
// their Port objects (PORT_OPEN(1) is re-sent for guest-open ones), others
// are removed or replaced. Each reset is reported on Events as DeviceReset
// with its cause, before the ports' own events; violations the driver
// isolates without a reset are reported as ProtocolViolation (rate-limited
// like their log lines). Config.MaxResets resets per minute are allowed;
// one more fault fails the device: it is reset, every port is removed, and
// Done closes with Err. Close sends PORT_OPEN(0) for guest-open ports,
// resets the device and frees all memory once no reader or writer holds a
// buffer.
//
// Tests run the driver against virtiotest.Console, a model of QEMU 7.2's
// virtio-serial bus with its quirks and with switches for each way a device
// can misbehave.
package driver
