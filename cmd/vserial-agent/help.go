package main

// The help texts. Each says what the command does, where its effects
// appear, how to use it (examples) and how it exits; the flag list is
// appended from the flag set so it never goes stale.

const mainUsage = `vserial-agent: a userspace virtio-console (virtio-serial) driver for Linux guests.

It takes the guest's virtio-console PCI functions away from the kernel
(binding them to vfio-pci or uio_pci_generic), drives them itself, and publishes every
port the host (QEMU) offers as a Unix stream socket:

  /run/vserial/NAME          a port the host named NAME (e.g. org.qemu.guest_agent.0)
  /run/vserial/vport<D>p<N>  a port without a usable name (device D, port id N)
  /run/vserial/.control      the agent's control socket: status and events (used by 'list', 'events')

A guest program connects to a port's socket to talk to the host; one client
per port at a time.

Usage:
  vserial-agent run [flags]    drive virtio-console functions and serve their ports
  vserial-agent list [flags]   show virtio-console functions and a running agent's ports
  vserial-agent events [flags] follow a running agent's events, or wait for one (host connected...)
  vserial-agent udev-env NODE  print VSERIAL_PORT_NAME=NAME of a port node, for udev (contrib/udev)
  vserial-agent help [command] show help ("vserial-agent COMMAND --help" too)
  vserial-agent version        module version and VCS revision of this binary (--version too)

Examples:
  vserial-agent run                         serve every free virtio-console function
  vserial-agent run --device 0000:00:03.0   take this function (even from virtio-pci)
  vserial-agent run --bind vfio             VFIO only (type1 behind an IOMMU, or no-IOMMU)
  vserial-agent list                        what is there, and which ports are connected
  vserial-agent events --wait host-connected --port org.example.port --timeout 30s
                                            wait until the host side of a port is connected
  socat - UNIX-CONNECT:/run/vserial/org.example.port   talk to the host by hand

Exit codes:
  0  success; for run, a clean shutdown after SIGTERM or SIGINT
  1  runtime failure (socket directory, device, driver; the log says which)
  2  usage error: unknown command or flag, bad flag value
  4  events --wait: the --timeout passed first

Under systemd (Type=notify) run reports readiness when every port present at
start has its socket. Needs root. See the README for QEMU options and
docs/operating.md for the unit file and u-root images.
`

const runUsage = `Usage: vserial-agent run [flags]

Drive virtio-console PCI functions from userspace and publish every port as
a Unix stream socket in --socket-dir (default /run/vserial): SOCKET_DIR/NAME
for a port the host named, SOCKET_DIR/vport<D>p<N> for one without a usable
name (D: device index in PCI address order, N: port id). If two ports (of
two devices, say) have the same name, the first published keeps it (at
start: the lower device index) and the other is served as vport<D>p<N>;
the clash is logged and shown by 'list'.
Hot-plugged ports appear and unplugged ones disappear while it runs; a
device that breaks the protocol is reset and its ports come back. What a
socket does, rule by rule: docs/sockets.md.

Without --device it takes every virtio-console function that no kernel
driver holds. It logs to stderr (structured, one line per event, none per
buffer). With $NOTIFY_SOCKET set (systemd Type=notify) it sends READY=1 once
every port present at start has its socket, and STOPPING=1 at shutdown.

Ports can be configured by name (--config FILE, --port, --ignore; format in
docs/configuration.md): mode listen (the default), connect (the agent dials
a socket another program listens on, e.g. qemu-ga --method=unix-listen, and
redials with backoff), pty, or ignore (no socket, never opened towards the
host); a socket path, owner, group and mode.

One loop per device moves every port's bytes between its socket client and
the device (docs/data-plane.md). After a small request it polls for the reply
before sleeping (--poll adaptive: a budget learnt per port, never while idle
or streaming; off: interrupts only; or a fixed budget such as 200us). On
one CPU its threads run at --nice -10 (auto; 0 leaves them alone), so that
a client woken by a reply does not preempt the loop before it sleeps
(docs/operating.md).

SIGTERM or SIGINT shut down cleanly: clients see end of file; guest→host
bytes already read from clients get --shutdown-flush (2s) to reach the host,
and what is left is counted and logged ("not delivered"); the host sees
every port closed, the device is reset, the sockets are removed and the
function goes back to the driver it had; exit 0. A second signal kills.

Examples:
  vserial-agent run
  vserial-agent run --device 0000:00:03.0 --socket-dir /run/vserial --socket-mode 0600
  vserial-agent run --log-level debug
  vserial-agent run --poll off
  vserial-agent run --bind vfio
  vserial-agent run --port 'org.qemu.guest_agent.0 mode=connect target=/run/qga.sock'
  vserial-agent run --config /etc/vserial.conf --ignore org.example.unused

Bindings (--bind; docs/operating.md): vfio binds the function to vfio-pci.
Behind an IOMMU (the function has an iommu_group; boot with intel_iommu=on)
that is VFIO type1, the safe mode: the device reaches only the memory the
agent maps, and interrupts are MSI-X. Without an IOMMU it needs vfio's
no-IOMMU mode (vfio.enable_unsafe_noiommu_mode=1, /dev/vfio/noiommu-N).
uio binds it to uio_pci_generic: INTx, and the device sees physical
addresses. auto (the default) takes vfio when the function sits in a real
IOMMU group and vfio-pci is registered or loadable, uio otherwise; it logs
its choice, and 'list' shows it for each function.

Exit codes: 0 clean shutdown, 1 runtime failure (logged), 2 usage error.

Flags:
`

const listUsage = `Usage: vserial-agent list [flags]

Show the virtio-console PCI functions in sysfs (address, ids, which driver
holds them, IOMMU group, and the binding 'run --bind auto' would choose with
its reason, e.g. "vfio (IOMMU group 5)" or "uio (no IOMMU group)") and,
when an agent serves --socket-dir, its ports as it reports them over
SOCKET_DIR/.control: device, id, name, socket, whether the host and a guest
client are connected, byte counters, rejected clients, and a name that
could not be used as the socket name (a clash or an unusable name).

Examples:
  vserial-agent list
  vserial-agent list --json | jq '.agent.ports[] | select(.host_connected)'

Exit codes: 0 listed (no agent running is not an error), 1 sysfs could not
be read or the agent did not answer, 2 usage error.

Flags:
`

const eventsUsage = `Usage: vserial-agent events [flags]

Follow the events of the agent serving --socket-dir, as it streams them over
SOCKET_DIR/.control: first a snapshot of every port, then one line per
event: port_added, port_removed, port_renamed, host_connected,
host_disconnected, client_connected, client_disconnected, client_rejected,
console_resize, device_reset, protocol_violation, device_failed, and last
agent_stopping when the agent shuts down. Text lines by default (time, event,
key=value), the agent's JSON lines with --json (fields: docs/events.md).
--port NAME keeps only the lines about that port.

With --wait COND --port NAME it prints nothing but the line that made COND
true and exits 0 as soon as COND holds for the port (at once if the snapshot
shows it), instead of polling for a socket or an end of file. COND is one of
host-connected, host-disconnected, client-connected, client-disconnected
(the port exists and its host side / a guest client is or is not
connected), port-added (the port exists) or port-removed (it does not).
NAME is the host's name of the port, its socket file name (vport0p3) or
its socket path.

A subscriber that does not read fast enough is cut off by the agent (its
queue is bounded, the agent never waits for it): the stream ends with an
overflow line; events then exits 1, and --wait subscribes again.

Examples:
  vserial-agent events
  vserial-agent events --json | jq -c 'select(.event == "host_connected")'
  vserial-agent events --wait host-connected --port org.qemu.guest_agent.0 --timeout 60s && start-my-agent

Exit codes: 0 the agent ended the stream (it stopped) or, with --wait, COND
holds; 1 no agent running, the stream was cut off, or the agent stopped
before COND; 2 usage error; 4 --wait: --timeout passed first.

Flags:
`
