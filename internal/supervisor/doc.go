// Package supervisor is the one implementation of what `vserial-agent run`
// and package vserial do with virtio-console functions: take them
// (internal/devopen), bring them up with their data-plane loop, publish
// their ports as sockets (package agent) when asked to, hold ports
// in-process for Dial (Take), follow ports and whole functions as they
// come and go, tell the host through each device's emergency channel when
// the program starts or a device fails, and give everything back at Close.
//
// Package vserial is its public front: vserial.Options become a Config,
// vserial.Agent wraps a Supervisor. cmd/vserial-agent is a user of
// package vserial; what it needs beyond the public API (fake devices in
// its tests, each device for its last gasp and fault injection, the counts
// for systemd's READY) it passes in Hooks, through Open's context
// (WithHooks), so that none of it is vserial's API.
//
// # What it promises
//
//   - Open returns only once every port present at start is published
//     (socket created), device by device in index order, so a name two
//     devices share goes to the lower index.
//   - A port is served either as a socket or held by one Take, never both:
//     Take disconnects the socket's client and the socket refuses clients
//     until the Held is closed.
//   - Close closes the Helds, then the socket side, then the devices (the
//     host sees PORT_OPEN 0, the functions go back), and waits for every
//     goroutine it started. Every goroutine starts with guard.Recover.
//   - Without Config.WaitDevices, Done is closed once every device stopped
//     (and the host was told); with it, functions are adopted and let go
//     as the kernel reports them, and Done never closes.
//
// # What it never does
//
//   - Anything process-wide: signals, GOMAXPROCS, the panic handler
//     (guard.SetHandler) and systemd notification are the program's.
//   - Take a function a kernel driver holds, unless Config.Devices names it.
package supervisor
