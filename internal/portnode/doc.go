// Package portnode serves virtio-console ports as character devices
// (/dev/vport<D>p<ID> with the /dev/virtio-ports/NAME symlink) through
// CUSE (package cuse), with the file semantics of Linux's virtio_console
// driver (drivers/char/virtio_console.c, port_fops_*), for programs
// written for the kernel driver (run --nodes; docs/nodes.md).
//
// Its caller is cmd/vserial-agent: NewDevice per virtio-console device,
// Device.Add per port (the returned Port is also what the socket side
// opens through SetGuestOpen), Device.Close when the device goes.
//
// # Contract
//
//   - A Port has one holder: the node's opener or the socket side
//     (SetGuestOpen). Whoever opens first holds it; the node's second
//     opener gets EBUSY, the socket side ErrHeldByNode.
//   - The node's open file is an in-process endpoint of the device's loop
//     (pump.Attach): reads and writes copy once between the request and
//     the device's buffers; poll is answered from driver.Port.Ready and the
//     endpoint's watch, and the kernel is told of changes through
//     FUSE_NOTIFY_POLL (also after an EAGAIN, so an edge-triggered epoll
//     hears when to try again).
//   - open, read, write, poll, fsync, ioctl and release answer as Linux's
//     port does (EBUSY, ENXIO on a console, EAGAIN, end of file while the
//     host is away, POLLIN/POLLOUT/POLLHUP, EINVAL, ENOTTY, PORT_OPEN 1 and
//     0); an INTERRUPT ends a waiting read or write with EINTR.
//   - A node exists while its port does and Config.Want says so; its
//     symlink while the port has a usable name. An unplugged port's open
//     file is served as Linux serves it (ENODEV, POLLHUP) until closed, with the node already unlinked. Close removes every node and
//     link and returns once every goroutine the package started for the
//     device has returned.
//   - It never imports agent: sockets are cmd's business.
package portnode
