// Package agent publishes virtio-console ports as Unix stream sockets.
//
// Each port becomes SOCKET_DIR/NAME, NAME being the name the host gave the
// port (PORT_NAME). A port without a usable name is published as
// vport<DEV>p<ID>, the name Linux gives its character device, and moves to
// its real name when one arrives.
//
// Names are unique across devices: when a port's name is already the socket
// of another port (of the same or another device), the port that was
// published first keeps it and is never disturbed; the other is served as
// vport<DEV>p<ID>, the clash is logged once (with the owner's device and
// port) and shown in PortStatus.NameProblem (`vserial-agent list`). When the
// owner goes away the other port moves to the name (a client already
// connected keeps its connection). A name unusable as a file name is
// reported the same way.
//
// The package knows nothing of PCI, rings or DMA memory: it consumes the
// small Port interface in port.go, which the driver satisfies through an
// adapter in cmd/vserial-agent.
//
// # One client per port
//
// Like Linux, which lets one process open a port at a time (a second open
// gets EBUSY), a port accepts one connection at a time. A second connection
// while one is active is closed at once, logged and counted
// (PortStatus.RejectedClients). Connecting tells the host the guest opened the
// port (PORT_OPEN 1); the end of the connection tells it the guest closed it
// (PORT_OPEN 0).
//
// # Nothing accepted is lost
//
// QEMU drops guest→host data while no host program is connected to the
// port's chardev. The agent therefore never reads from a client while the
// host side is disconnected: the bytes stay in the socket's buffer, the
// client's writes block once that buffer is full (backpressure), and the
// bytes flow as soon as the host connects. The host state is checked just
// before each read from the socket, not only before waiting for data, so a
// host that leaves while the agent waits for the client does not cause the
// next bytes to be read and thrown away. When the client closes or
// half-closes (EOF) the agent waits until the device has taken everything it
// read (Flush), then closes the port. A half-close ends the session in both
// directions, as close(2) on the port's character device would.
//
// The client is not told when the host disconnects (a Linux reader would
// see EOF): its connection stays up, its bytes simply wait, and host bytes
// flow again when the host returns.
//
// A client that disconnects with nothing left unread ends its session even
// while the host is away. One that disconnects while guest→host bytes are
// still waiting for the host keeps the port (and rejects new clients) until
// the host connects and takes those bytes.
//
// # Host→guest data without a client
//
// A port with no client is closed from the guest's point of view (PORT_OPEN
// 0), so QEMU does not deliver host→guest data at all: it stays in the host
// program's socket until a client connects. Bytes the port had already
// received when the client went away are discarded by
// Port.SetGuestOpen(false) and counted as discarded (PortStats.Discarded),
// which is what Linux does on the last close of a port. Bytes a client did
// not take because it closed in the middle of a write are discarded and
// counted the same way.
//
// # Per-port configuration and connect mode
//
// Config.Ports and Config.Default choose each port's Mode by name (the
// host's name, or vport<DEV>p<ID> while it has none): ModeListen publishes
// a socket (at PortConfig.Socket if set, with its own owner, group and
// mode), ModeConnect dials PortConfig.Target and treats the dialed
// connection as the client (PORT_OPEN follows it, the same backpressure
// applies), redialing with capped exponential backoff (Config.RedialMin,
// RedialMax) when the dial fails or the connection ends, ModeIgnore leaves
// the port closed and unpublished. A name arriving after PORT_ADD can move
// a port to another mode; the old mode's socket, dialer and client end.
//
// # Socket directory
//
// New creates the directory if missing (mode Config.DirMode), and refuses a
// directory that is a symbolic link or is not owned by the effective user.
// It removes socket files left by an earlier agent (only sockets whose names
// this package could have created; other files are left alone and logged),
// unless the control socket answers, which means another agent is serving
// the directory. Sockets are bound under a temporary name, given
// Config.SocketMode, then linked to their final name, so no client ever sees
// a socket with the wrong mode.
//
// # Control socket
//
// ListenControl and ServeControl answer status requests on
// SOCKET_DIR/.control (one JSON request and one JSON response per
// connection); QueryStatus is the client side, used by `vserial-agent list`.
package agent
