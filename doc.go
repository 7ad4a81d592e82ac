// Package vserial holds the ports of a virtio-console (virtio-serial)
// device inside a Go program, without the kernel's virtio_console driver
// and without a socket in between: a guest agent written in Go opens the
// device with Open and gets each port as a net.Conn with Dial.
//
//	a, err := vserial.Open(ctx, vserial.Options{})
//	if err != nil { ... }
//	defer a.Close()
//	c, err := a.Dial(ctx, "org.example.agent.0") // QEMU: virtserialport,name=org.example.agent.0
//	if err != nil { ... }
//	defer c.Close()
//	c.Write([]byte("hello, host\n"))
//
// On the host, QEMU's side of the port (-chardev socket,...) is an
// ordinary socket; the guest program reads and writes c. Read and Write
// copy once, between the caller's slice and the device's buffers, in the
// caller's goroutine; no system call is made per message unless the
// program must wait, and then it is woken in-process.
//
// # What Open does
//
// Open takes PCI functions from the kernel as `vserial-agent run` does
// (the free virtio-console functions, or Options.Devices; uio_pci_generic,
// or vfio-pci in a real IOMMU group), brings each up with MULTIPORT and
// one data-plane goroutine, and returns once the ports present at start
// are published. With Options.SocketDir every port no conn holds is also
// served as a Unix socket there; a Dial takes such a port over. Every
// other field of Options is one of run's flags, its zero value the flag's
// default: run is itself a user of this package.
//
// # Port semantics
//
// A conn is its port's one client, with the semantics of a socket client
// of run: Dial tells the host the port is open (PORT_OPEN 1) and Close that
// it closed (PORT_OPEN 0); while the host side is away, Write waits and
// nothing is lost; host bytes that arrive while no conn holds the port are
// discarded and counted, as Linux does; deadlines work and end calls with
// os.ErrDeadlineExceeded. Read and Write return ErrPortRemoved once the host
// unplugged the port, and ErrDeviceReset once when bytes were, or may have
// been, lost in a reset of the device (the conn goes on). Dial waits for a
// port that does not exist yet (hot-plug), until its context ends. Ports
// lists the live ports and Changed says when that list or a host
// connection changes.
//
// # What the program must provide
//
//   - Root (CAP_SYS_ADMIN and CAP_SYS_RAWIO at least): Open binds drivers
//     through sysfs, maps the device's registers and pins DMA memory.
//   - The kernel modules uio_pci_generic (and for VFIO: vfio, vfio-pci,
//     vfio_iommu_type1) built in, loaded, or loadable from
//     /lib/modules/$(uname -r); Open loads them itself, taking module
//     parameters from the kernel command line.
//   - For conns held in-process (Dial), GOMAXPROCS of at least 2 (Go's
//     default on two or more CPUs; on one vCPU set it): when Options.Poll
//     is not "off" the data plane spins after a request for its reply, and
//     with a single P the conn's goroutine waits for that spin to end. The
//     first Dial logs a warning otherwise. Sockets alone do best with
//     Go's default (vserial-agent keeps it: one P on one vCPU, where the
//     data plane sleeps parked in Go's poller).
//   - Nothing else in the process driving the same functions. Signals,
//     systemd notification and what to do on a panic stay the program's.
//   - A look at Done: it is closed when every device stopped (Err says
//     so; not with Options.WaitDevices). The program then usually exits,
//     after Close. The host was already told through each device's
//     emergency channel, which also carries "PROGRAM: starting on ADDR"
//     at Open (Options.Program).
//
// The repository's docs/go-api.md says more, and the example under
// examples/echo is a complete guest program.
//
// # Repository-wide tests
//
// This package's tests also keep the packages' promises to each other
// (import direction, guarded goroutines, unsafe only in *_unsafe.go files,
// short production functions); docs/testing.md lists them.
package vserial
