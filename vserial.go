package vserial

import (
	"context"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"runtime"
	"sync"
	"time"

	"github.com/vserial/vserial/agent"
	"github.com/vserial/vserial/driver"
	"github.com/vserial/vserial/internal/devopen"
	"github.com/vserial/vserial/internal/supervisor"
	"github.com/vserial/vserial/pump"
)

// Options say which functions Open takes and how it serves them. The zero
// value takes every free virtio-console function, binds each as `run
// --bind auto` would, serves no sockets, polls adaptively and logs nothing.
// Every field is one of `vserial-agent run`'s flags (run builds its Options
// from them), and each zero value is run's default.
type Options struct {
	// Devices are PCI addresses ("0000:00:04.0") of the functions to take,
	// even from a kernel driver that holds them; empty: every
	// virtio-console function no driver holds (or that uio_pci_generic
	// holds, left there by an earlier run).
	Devices []string
	// Bind is "auto" (also ""): vfio-pci for a function in a real IOMMU
	// group, uio_pci_generic otherwise; "uio" or "vfio" to insist.
	Bind string
	// SocketDir, when not "", is where ports nobody dialed in-process are
	// served as Unix sockets (with the control socket), as `vserial-agent
	// run --socket-dir` does. "": no sockets.
	SocketDir string
	// Poll is run's --poll: "adaptive" (also ""), "off", or a fixed spin
	// budget such as "200us" (at most 10ms).
	Poll string
	// Logger receives what the driver, the data plane and the sockets
	// log; nil discards it.
	Logger *slog.Logger

	// SocketMode, ControlMode and DirMode are the permissions of each
	// port socket, of the control socket and of SocketDir when Open creates
	// it (--socket-mode, --control-mode, --dir-mode; 0: 0660, 0600, 0755).
	SocketMode, ControlMode, DirMode fs.FileMode
	// Ports configures the sockets of ports by name (the host's name, or
	// vport<D>p<ID>), DefaultPort every other port: mode, socket path,
	// owner, ignore... (--config, --port, --ignore; docs/configuration.md).
	Ports       map[string]agent.PortConfig
	DefaultPort agent.PortConfig
	// Console says what console ports (virtconsole) get besides their
	// socket: a pseudo-terminal, a program on it (--console-pty,
	// --console-exec, --console-max, --console-env). Zero: nothing.
	Console agent.ConsoleConfig
	// MaxPorts caps the ports set up per device (--max-ports): 0:
	// DefaultMaxPorts; negative: as many as the device offers (up to
	// driver.MaxPorts).
	MaxPorts int
	// DMABudget bounds the DMA memory one device may take, in bytes
	// (--dma-budget; 0: driver.DefaultDMABudget). docs/memory.md.
	DMABudget int
	// Ring is the virtqueue layout (--ring): "auto" (also ""), "split",
	// or "packed" (fail if the device does not offer it).
	Ring string
	// ShutdownFlush bounds, at Close, the wait for the host to take
	// guest→host bytes already queued (--shutdown-flush; 0: 2 s; negative:
	// no wait). What is left is counted and logged.
	ShutdownFlush time.Duration
	// WaitDevices: Open succeeds with no function at all, and functions
	// that appear later (hot-plug) are taken, those that go let go
	// (--wait-devices). Without it, Done is closed once every device
	// stopped.
	WaitDevices bool
	// Nodes: every port also gets a character device node like the
	// kernel driver's, /dev/vport<D>p<ID> with the /dev/virtio-ports/NAME
	// link (CUSE; --nodes), unless its PortConfig.Node says otherwise. The
	// node, the socket and Dial share the port: whoever opens first holds
	// it. docs/nodes.md.
	Nodes bool
	// Sysfs is where functions are found and bound ("": /sys; for tests).
	Sysfs string
	// Program names the program in the lines written to the host through
	// each device's emergency channel ("PROGRAM: starting on ...",
	// "PROGRAM: fatal: ..."); "": "vserial".
	Program string
}

// DefaultMaxPorts is the port cap per device when Options.MaxPorts is 0: a
// device offering more (QEMU allows 511, the protocol 0x8000) gets this
// many; docs/memory.md says what each port costs.
const DefaultMaxPorts = 64

// Errors of Open, Dial and a conn's methods. The driver's errors reach a
// conn's Read and Write as they are.
var (
	// ErrClosed is returned by Dial after Close.
	ErrClosed = supervisor.ErrClosed
	// ErrPortHeld is returned by Dial for a port a conn already holds.
	ErrPortHeld = supervisor.ErrPortHeld
	// ErrPortRemoved is returned by a conn's Read and Write once the host
	// unplugged the port (or its device stopped).
	ErrPortRemoved = driver.ErrPortRemoved
	// ErrDeviceReset is returned once by a conn's Read or Write when bytes
	// were, or may have been, lost in a reset of the device (docs/go-api.md
	// says when); the conn goes on after it.
	ErrDeviceReset = driver.ErrDeviceReset
	// ErrEveryDeviceStopped is Err once every device stopped.
	ErrEveryDeviceStopped = supervisor.ErrEveryDeviceStopped
)

// Agent holds the virtio-console functions Open took. Its methods are safe
// for concurrent use.
type Agent struct {
	s *supervisor.Supervisor
	// onOneP warns, at the first Dial, that an in-process conn shares one
	// P with the data plane's spin.
	onOneP func()
}

// Open takes the virtio-console functions opts name and brings them up as
// `vserial-agent run` does: each is bound to uio_pci_generic or vfio-pci
// (loading the kernel modules from /lib/modules if needed), reset and
// brought up with MULTIPORT, and served by one data-plane loop. It needs
// root (or CAP_SYS_ADMIN and CAP_SYS_RAWIO). With SocketDir set, the ports
// present now have their sockets when Open returns, later ones as they
// come, until a Dial takes them. ctx bounds the bring-up only.
func Open(ctx context.Context, opts Options) (*Agent, error) {
	cfg, err := opts.config()
	if err != nil {
		return nil, err
	}
	s, err := supervisor.Open(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("vserial: %w", err)
	}
	spins, log := cfg.Poll.Mode != pump.PollOff, cfg.Logger
	return &Agent{s: s, onOneP: sync.OnceFunc(func() {
		if spins && runtime.GOMAXPROCS(0) < 2 {
			log.Warn("vserial: GOMAXPROCS is below 2; a conn held in-process waits for the data plane's spin to end before it runs (set GOMAXPROCS=2)")
		}
	})}, nil
}

// config checks o and turns it into the supervisor's Config.
func (o Options) config() (supervisor.Config, error) {
	cfg := supervisor.Config{
		Devices:       o.Devices,
		Bind:          o.Bind,
		MaxPorts:      o.MaxPorts,
		DMABudget:     o.DMABudget,
		ShutdownFlush: o.ShutdownFlush,
		Sysfs:         o.Sysfs,
		WaitDevices:   o.WaitDevices,
		Nodes:         supervisor.NodeWant(o.Nodes, o.Ports, o.DefaultPort),
		Program:       o.Program,
		Logger:        o.Logger,
	}
	switch o.Bind {
	case "", devopen.BindAuto, devopen.BindUIO, devopen.BindVFIO:
	default:
		return cfg, fmt.Errorf("vserial: Bind %q: want auto, uio or vfio", o.Bind)
	}
	var err error
	if cfg.Poll, err = pump.ParsePoll(o.Poll); err != nil {
		return cfg, fmt.Errorf("vserial: %w", err)
	}
	if o.Ring != "" {
		if cfg.Ring, err = driver.ParseRingLayout(o.Ring); err != nil {
			return cfg, fmt.Errorf("vserial: %w", err)
		}
	}
	switch {
	case o.MaxPorts == 0:
		cfg.MaxPorts = DefaultMaxPorts
	case o.MaxPorts < 0:
		cfg.MaxPorts = 0 // as many as the device offers
	case o.MaxPorts > driver.MaxPorts:
		return cfg, fmt.Errorf("vserial: MaxPorts %d: at most %d", o.MaxPorts, driver.MaxPorts)
	}
	if o.DMABudget < 0 {
		return cfg, fmt.Errorf("vserial: DMABudget %d: negative", o.DMABudget)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Program == "" {
		cfg.Program = "vserial"
	}
	if o.SocketDir != "" {
		cfg.Sockets = &agent.Config{
			SocketDir: o.SocketDir, SocketMode: o.SocketMode, ControlMode: o.ControlMode, DirMode: o.DirMode,
			Ports: o.Ports, Default: o.DefaultPort, Console: o.Console,
		}
	}
	return cfg, nil
}

// Dial returns the port named name held in-process: name is the name the
// host gave the port (QEMU's virtserialport name=), or vport<D>p<ID> (D the
// device's index in the order Open took them, ID the port number). It
// waits until such a port exists or ctx ends. A name two devices share
// goes to the lower device index.
//
// The conn is then the port's one client, with the semantics of a socket
// client of `vserial-agent run`: Dial tells the host the port is open
// (PORT_OPEN 1) and Close that it closed (PORT_OPEN 0); while the host side
// is away Write waits (nothing is lost) and Read waits; host bytes that
// arrive for a closed conn are discarded and counted. Deadlines work
// (os.ErrDeadlineExceeded). A second Dial of a held port fails with
// ErrPortHeld. Dial of a port served as a socket takes it over: its
// socket client, if any, is disconnected (the reason is logged) and the
// socket refuses clients until the conn is closed.
func (a *Agent) Dial(ctx context.Context, name string) (net.Conn, error) {
	a.onOneP()
	h, err := a.s.Take(ctx, name)
	if err != nil {
		return nil, err
	}
	return &conn{h: h, addr: Addr(name)}, nil
}

// PortInfo describes a live port of the functions the Agent drives.
type PortInfo struct {
	Device        int    // the device's index, the D of vport<D>p<ID>
	ID            uint32 // the port number (QEMU's nr=)
	Name          string // the name the host gave it, "" if none yet
	HostConnected bool   // the host side is connected (QEMU: a client on the chardev)
	Held          bool   // a conn holds it (Dial)
}

// Ports returns the live ports, by device index then port number. With
// Changed, it tells a program without a socket directory what the event
// stream of the control socket tells others: ports added and removed, the
// host connecting and leaving.
func (a *Agent) Ports() []PortInfo {
	var out []PortInfo
	for _, p := range a.s.Ports() {
		out = append(out, PortInfo(p))
	}
	return out
}

// Changed returns a channel that is closed at the next change of what
// Ports reports (a port plugged, named or unplugged, its host side
// connecting or leaving, a Dial or a conn's Close, a device opened or
// stopped), and at Close. Take it before calling Ports, so that no change
// falls in between:
//
//	for {
//		changed := a.Changed()
//		show(a.Ports())
//		<-changed
//	}
func (a *Agent) Changed() <-chan struct{} { return a.s.Changed() }

// Done is closed when the agent stopped serving on its own: every device
// stopped (each told the host why through its emergency channel) and
// Options.WaitDevices is not set. A program then usually exits; it must
// still call Close. Err says why.
func (a *Agent) Done() <-chan struct{} { return a.s.Done() }

// Err is ErrEveryDeviceStopped once Done is closed, nil before.
func (a *Agent) Err() error { return a.s.Err() }

// Close closes every conn, closes the sockets (their clients see end of
// file), tells the host the ports closed, resets the devices and gives
// the functions back to the drivers they had. It returns the first error
// of closing a device, and is idempotent.
func (a *Agent) Close() error { return a.s.Close() }
