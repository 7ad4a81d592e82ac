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
// ListenControl and ServeControl serve SOCKET_DIR/.control. A client sends
// one request line, a JSON object with only an "op": {"op":"status"} is
// answered with one StatusReport line and the connection closes
// (QueryStatus, QueryReport: `vserial-agent list`); {"op":"events"} opens an
// event stream (SubscribeEvents: `vserial-agent events`). Anything else (an
// unknown op or field, a second value, a line over 4096 bytes, no line
// within 10 s) gets {"error":"..."} or is closed. StatusReport is the one
// definition of the status shape: the answer, the snapshot's Status and the
// "agent" object of `list --json`.
//
// # Event stream
//
// The stream is one JSON object per line (Event), each with "event" (its
// EventKind) and "time" (UTC), and device, port, name and socket where
// they apply. The first line is always a snapshot (EventSnapshot, Status
// holding every port), taken after the subscription is registered: a
// change that races with the snapshot can show in it and again as an
// event, but none falls between the two, so a subscriber applies events to
// the snapshot and never needs a status query besides. Then come
// port_added (with host_connected), port_removed (reason), port_renamed
// (old_name, old_socket: the host named the port, or the socket moved),
// host_connected, host_disconnected, client_connected (peer_pid,
// peer_uid), client_disconnected (reason), client_rejected
// (rejected_total), console_resize (cols, rows, pty; a console's known size
// right after its port_added), and the device events that the code driving
// the device hands to ReportDevice: device_reset (reason), protocol_violation
// (reason, violations, and the port when one is concerned) and
// device_failed (reason). Events of one port come in the order they
// happened; a client's client_disconnected always precedes the next
// client's client_connected.
//
// Publishing never blocks the agent. Each subscriber has a queue of
// DefaultEventQueue lines; when an event finds it full the subscriber is
// cut off: it still gets what was queued, then a last line
// {"event":"overflow",...}, and the connection closes (within a few
// seconds, even if the client reads nothing). It can subscribe again for a
// fresh snapshot. At most MaxSubscribers streams are open at once. The
// stream ends when the client closes (or half-closes) its side, and when
// the agent closes: the ports' port_removed lines, then agent_stopping.
// What the client sends after its request is ignored.
package agent
