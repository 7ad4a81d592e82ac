// Command vserial-agent drives virtio-console PCI functions from userspace
// and publishes every port as a Unix socket. See `vserial-agent --help`;
// docs/operating.md describes the commands, bindings, exit codes and how
// to run it.
//
// It composes the packages (as the Go library, package vserial, does for
// a program that holds ports in-process): for each function it finds
// (pciscan), internal/devopen chooses a binding and loads its modules,
// takes the function from its kernel driver (pciscan), opens it (uio),
// brings the device up (driver) and starts its data-plane loop (pump);
// wiring.go hands its ports and device events to the agent (agent). Flags exist
// only here: parseRun turns them into a runConfig, from which the packages'
// Config values are built.
//
// # What it promises
//
//   - Every mistake in flags or the configuration file stops the command
//     before it touches a device, with exit code 2 and what is wrong.
//   - Whatever happens after a function was taken, the device is reset and
//     the function goes back to the driver it had (undo stack in
//     devopen.Open).
//   - A device that stops, a failed open or a panic in any goroutine is told
//     to the host through the emergency write before the process exits
//     (run.go, internal/guard).
//   - Under systemd (Type=notify) READY=1 is sent only once every port
//     present at start has its socket (notify.go).
//
// # What it never does
//
//   - Take a function a kernel driver holds, unless --device names it.
//   - Inject faults: only a binary built with -tags faultinject
//     (inject_on.go) can; the production build compiles inject_off.go.
//
// The whole CLI runs against fake devices in tests through
// realMain(ctx, args, stdout, stderr, open), where open is the function
// that opens one device (openDevice in production).
package main
