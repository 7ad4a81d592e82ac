// Command vserial-agent drives virtio-console PCI functions from userspace
// and publishes every port as a Unix socket. See `vserial-agent --help`;
// docs/operating.md describes the commands, bindings, exit codes and how
// to run it.
//
// `run` is a user of package vserial, the Go library: parseRun turns the
// flags into a runConfig, runAgent builds vserial.Options from it, calls
// vserial.Open (which returns once the ports present at start have their
// sockets), reports READY, waits for a signal or for every device to stop,
// and closes. The steps between live in internal/supervisor, vserial's
// implementation. What is the process's stays here: flags, GOMAXPROCS,
// signals, the log, systemd notification (notify.go), the last gasp on a
// panic and fault injection (run.go, inject_on.go). Flags exist only here.
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
//     (internal/supervisor, run.go, internal/guard).
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
// realMain(ctx, args, stdout, stderr, open), where open is the
// supervisor.Opener that opens one device (nil in production: the real
// ones); run hands it to vserial.Open in supervisor.Hooks.
package main
