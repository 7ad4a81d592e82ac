// Package agent publishes virtio-console ports as Unix stream sockets in one
// socket directory, and serves the control socket (status and the event
// stream) in the same directory.
//
// Its caller is cmd/vserial-agent: New takes the directory and the per-port
// configuration, AddPort hands it each port a device announces, ReportDevice
// each device event, Close ends it all. The package knows nothing of PCI,
// rings or DMA memory. It sees a port only through the Port interface
// (port.go), which a driver.Port satisfies through an adapter in
// cmd/vserial-agent, and, when a data-plane loop drives the port's device,
// through FDServer, to which it hands each client's descriptor.
//
// # What it promises
//
//   - Each port is served in the Mode its configuration names by the port's
//     name (Config.Ports, Config.Default): a listening socket, a dialed
//     connection, a pseudo-terminal, or nothing. What a guest program sees on
//     a socket (names, permissions, one client at a time, backpressure while
//     the host is away, what happens to bytes when either side leaves,
//     consoles, hot-plug) is specified in docs/sockets.md, each rule with the
//     test that pins it; docs/configuration.md has the modes.
//   - The control socket's protocol and every Event it streams are specified
//     in docs/events.md. StatusReport is the one definition of the status
//     shape: the status answer, the snapshot's Status and `list --json`.
//   - Close ends every session (telling the host the guest closed the
//     port), ends every subscriber with its last lines, removes the sockets
//     and symlinks it created and returns once every goroutine it started
//     has returned. It is idempotent.
//
// # Who owns what
//
//   - A client's descriptor belongs to its session. An FDServer moves its
//     bytes but never closes it; the session does, when it ends.
//   - The bytes of a port belong to the Port: the agent never touches device
//     memory. It moves bytes through Port.Recv and Port.Send (each slice valid
//     only during the call), or lets FDServer.ServeFD move them.
//   - The socket directory is the agent's while it runs (an exclusive flock).
//     In it the agent creates, renames and removes only files whose names it
//     could have created (sockets, NAME.pty symlinks, temporary names,
//     .control), and never follows a symbolic link when it makes a socket. A
//     socket configured outside the directory replaces only a stale socket
//     file at that path.
//
// # What it never does
//
//   - Read from a client while the port's host side is disconnected: QEMU
//     would drop the bytes.
//   - Wait for an event subscriber: one that falls behind is cut off.
//   - Give a console program the agent's own environment: it gets
//     ConsoleConfig.Env, or MinimalEnv.
//   - Import driver, ring, uio, dma or pciscan (layering_test.go).
package agent
