// Package driver drives one virtio-console PCI function: it brings the
// device up, runs the console's multiport control protocol and moves port
// data through the virtqueues. Its callers are internal/devopen (one Device
// per function, opened for internal/supervisor) and package pump (the
// data-plane loop, through the poll face in poll.go and poll_port.go).
//
// It reaches hardware only through the interfaces in hw.go (Function,
// ConfigSpace, BAR, IRQ, VectorIRQ), which packages uio and vfio implement for
// uio_pci_generic and VFIO and package virtiotest fakes for tests. It knows
// nothing of sockets, paths or how the function was bound.
//
// # What it promises
//
//   - Open returns a Device that is up (DRIVER_OK, DEVICE_READY sent) with
//     the ports present at start known. Every port and device change is
//     reported on Events (PortAdded, PortRemoved, PortChanged, DeviceReset,
//     DeviceLimited, ProtocolViolation); PortAdded and PortRemoved are never
//     dropped.
//   - A device never takes more memory than Config.DMABudget: every
//     allocation is checked first, and a device that asks for more gets
//     fewer ports or smaller buffer sets (DeviceLimited).
//   - A Port moves bytes with one copy on each side: Recv and RecvTo hand the
//     device's receive buffers straight to the reader, Send and SendFrom read
//     straight into transmit buffers. The steady-state path allocates nothing.
//   - Send waits while the host side of a non-console port is disconnected
//     (QEMU would drop the bytes). Bytes a device reset may have lost are
//     reported once (ErrDeviceReset): to the port's writer when it had
//     bytes queued, to its RecvTo reader, after the bytes that arrived
//     before the reset, when host→guest bytes moved in the second before it
//     (QEMU drops a chardev read that lands as the device breaks). Bytes
//     never delivered are counted (PortStats).
//   - A device that breaks the protocol is answered by isolating the message
//     or port, or by a reset and a new bring-up on the same memory, within
//     Config.MaxResets per minute; after that the device fails: every port
//     is removed and Done closes with Err.
//   - Close sends PORT_OPEN(0) for guest-open ports, resets the device and
//     frees all its memory once no reader or writer holds a buffer.
//
// # Who writes which memory
//
//   - The rings follow package ring: split (the driver writes descriptors
//     and the avail ring, the device writes the used ring) or, with
//     VIRTIO_F_RING_PACKED, packed (one descriptor ring both write, whose
//     AVAIL/USED bits say who owns each descriptor).
//   - Receive buffers are written by the device only; the driver reads one
//     after the used ring returned it, lends it to a reader only for the
//     duration of one call, and re-posts it after.
//   - Transmit buffers are written by the driver before they are published
//     and not touched again until the device returns them.
//   - Control messages are copied out of device memory before they are
//     parsed. Device configuration is read under config_generation.
//
// # What it never does
//
//   - Trust what the device writes: every index, id, length, name and count
//     is checked; a violation is counted, logged (rate-limited) and answered
//     as above, never by a panic, an out-of-range access or a hang.
//   - Start a goroutine with Config.ExternalLoop: the caller's loop drives it.
//   - Log per buffer.
//
// How each step works is described next to its code (transport.go,
// bringup.go, control_handlers.go, rx.go, tx.go, irqloop.go, fault.go).
// Tests run it against virtiotest.Console, a model of QEMU 7.2's
// virtio-serial bus with its quirks and a switch for each misbehaviour.
package driver
