package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/vserial/vserial"
	"github.com/vserial/vserial/agent"
	"github.com/vserial/vserial/driver"
	"github.com/vserial/vserial/internal/devopen"
	"github.com/vserial/vserial/pciscan"
	"github.com/vserial/vserial/pump"
)

// Exit codes, listed in the top-level help.
const (
	exitOK      = 0 // success; run: clean shutdown after SIGTERM/SIGINT
	exitFailure = 1 // runtime failure
	exitUsage   = 2 // unknown command or flag, bad flag value
)

// usageError is a mistake on the command line; it exits with exitUsage.
type usageError struct {
	cmd string
	err error
}

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

func usagef(cmd, format string, args ...any) error {
	return &usageError{cmd: cmd, err: fmt.Errorf(format, args...)}
}

// Bind modes.
const (
	bindUIO  = devopen.BindUIO
	bindVFIO = devopen.BindVFIO
	bindAuto = devopen.BindAuto
)

// runConfig is everything `vserial-agent run` was told, checked.
type runConfig struct {
	Agent     agent.Config      // Logger is filled in by run
	Devices   []string          // canonical PCI addresses; empty: every free console
	Bind      string            // bindUIO, bindVFIO or bindAuto (chooseBind decides per function)
	MaxPorts  int               // 0: as many as the device offers (up to driver.MaxPorts)
	DMABudget int               // bytes of DMA memory per device (--dma-budget)
	Ring      driver.RingLayout // virtqueue layout (--ring)
	Poll      pump.Poll         // the data-plane loop's polling policy (--poll)
	Nice      int               // the nice value of every thread of the agent (--nice)
	// ClientSendBuffer: net.core.wmem_default while the agent runs, 0 to
	// leave it (--client-send-buffer; sndbuf.go).
	ClientSendBuffer int
	// WaitDevices: run with no function at all, adopt each that appears
	// and let go of each that goes (kernel uevents; --wait-devices).
	WaitDevices bool
	// Nodes: every port also gets a character device node through CUSE
	// unless its configuration says node=off (--nodes; docs/nodes.md).
	Nodes bool
	// ShutdownFlush bounds the wait at shutdown for the device to take
	// guest→host bytes already read from clients (--shutdown-flush;
	// negative: no wait).
	ShutdownFlush time.Duration
	LogLevel      slog.Level
	Sysfs         string
	// CPUProfile, when set, receives a pprof CPU profile of the run
	// (hidden flag, for performance work in guests).
	CPUProfile string
}

// listConfig is everything `vserial-agent list` was told.
type listConfig struct {
	SocketDir string
	JSON      bool
	Sysfs     string
}

// maxShutdownFlush bounds --shutdown-flush: each device waits in turn, and
// a supervisor's stop timeout (systemd: 90 s) must outlast them.
const maxShutdownFlush = 30 * time.Second

// parseRun turns `run` arguments into a checked runConfig. -h/--help returns
// pflag.ErrHelp after writing the help to out.
func parseRun(args []string, out io.Writer) (runConfig, error) {
	const cmd = "run"
	f := newRunFlags()
	fl := f.fl
	if err := fl.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			fmt.Fprint(out, runUsage+fl.FlagUsages())
			return runConfig{}, err
		}
		return runConfig{}, &usageError{cmd, err}
	}
	if fl.NArg() > 0 {
		return runConfig{}, usagef(cmd, "unexpected argument %q (run takes only flags)", fl.Arg(0))
	}
	var cfg runConfig
	for _, step := range []func(*runConfig) error{f.sockets, f.functions, f.dataPlane, f.consoles, f.rest} {
		if err := step(&cfg); err != nil {
			return runConfig{}, err
		}
	}
	return cfg, nil
}

// runFlags are run's flags as pflag parsed them, before they are checked.
type runFlags struct {
	fl            *pflag.FlagSet
	socketDir     *string
	socketMode    *string
	controlMode   *string
	dirMode       *string
	devices       *[]string
	bind          *string
	ringLayout    *string
	maxPorts      *int
	dmaBudget     *string
	consolePTY    *bool
	consoleExec   *string
	waitDevices   *bool
	nodes         *bool
	consoleMax    *int
	consoleEnv    *[]string
	poll          *string
	nice          *string
	clientSndbuf  *string
	shutdownFlush *time.Duration
	logLevel      *string
	configFile    *string
	portFlags     *[]string
	ignoreFlags   *[]string
	sysfs         *string
	cpuProfile    *string
}

// newRunFlags defines run's flags.
func newRunFlags() *runFlags {
	fl := pflag.NewFlagSet("run", pflag.ContinueOnError)
	fl.SetOutput(io.Discard)
	f := &runFlags{fl: fl}
	f.socketDir = fl.String("socket-dir", agent.DefaultSocketDir, "directory for the port sockets and the .control socket")
	f.socketMode = fl.String("socket-mode", fmt.Sprintf("%04o", agent.DefaultSocketMode), "permission bits of each socket, octal")
	f.controlMode = fl.String("control-mode", fmt.Sprintf("%04o", agent.DefaultControlMode), "permission bits of SOCKET_DIR/.control, octal (who may run list and events; it shows who uses the ports)")
	f.dirMode = fl.String("dir-mode", fmt.Sprintf("%04o", agent.DefaultDirMode), "permission bits of the socket directory when it is created, octal")
	f.devices = fl.StringArray("device", nil, "PCI address DDDD:BB:DD.F of a virtio-console function to drive (repeatable; default: every virtio-console function no driver holds)")
	f.bind = fl.String("bind", bindAuto, "how to take the function: vfio (vfio-pci), uio (uio_pci_generic) or auto (vfio in an IOMMU group, else uio; 'list' shows the choice)")
	f.ringLayout = fl.String("ring", "auto", "virtqueue layout: auto (packed when the device offers it, split otherwise), split, or packed (fail if not offered)")
	f.maxPorts = fl.Int("max-ports", vserial.DefaultMaxPorts, "set up at most this many ports per device (0: as many as the device offers, up to the protocol's 32768)")
	f.dmaBudget = fl.String("dma-budget", formatBytes(driver.DefaultDMABudget), "DMA memory one device may take (rings, buffers); beyond it ports get fewer buffers or are capped (docs/memory.md)")
	f.consolePTY = fl.Bool("console-pty", false, "give every console port (virtconsole) a pseudo-terminal as well as its socket: SOCKET_DIR/NAME.pty → /dev/pts/N")
	f.consoleExec = fl.String("console-exec", "", "run this program (absolute path, then arguments) on each console terminal, restarted when it exits; a getty, not a shell; implies --console-pty")
	f.waitDevices = fl.Bool("wait-devices", false, "keep running with no virtio-console function, adopt each that appears (hot-plug) and let go of each that goes; without it run exits when no device is left")
	f.nodes = fl.Bool("nodes", false, "also serve each port as a device node like Linux's: /dev/vport<D>p<ID>, /dev/virtio-ports/NAME (CUSE; per port node=on|off; docs/nodes.md)")
	f.consoleMax = fl.Int("console-max", agent.DefaultMaxConsoles, "give at most this many console ports of one device a terminal and a program; further consoles stay plain sockets")
	f.consoleEnv = fl.StringArray("console-env", nil, "KEY=VALUE for the --console-exec program's environment, added to the minimal one (PATH, TERM=vt220, HOME=/; repeatable)")
	f.poll = fl.String("poll", "adaptive", "poll for a reply after a small send before sleeping: adaptive (learns per port; never idle), off, or a budget such as 200us")
	f.nice = fl.String("nice", "auto", "nice value of the agent's threads, -20 to 19 (0: leave it), or auto: -10 on one CPU, where a client it wakes must not preempt it, 0 on more")
	f.clientSndbuf = fl.String("client-send-buffer", "0", "while running, set net.core.wmem_default (new sockets' send buffer) to this, e.g. 4MiB: fewer wake-ups guest→host; 0: leave it")
	f.shutdownFlush = fl.Duration("shutdown-flush", 2*time.Second, "at shutdown, wait at most this long for the host to take guest→host bytes already read from clients (0: no wait); what is left is counted and logged")
	f.logLevel = fl.String("log-level", "info", "debug, info, warn or error")
	f.configFile = fl.String("config", "", "per-port configuration file (format: docs/configuration.md)")
	f.portFlags = fl.StringArray("port", nil, "configure one port: 'NAME KEY=VALUE ...' as after 'port' in the config file (repeatable; overrides the file key by key)")
	f.ignoreFlags = fl.StringArray("ignore", nil, "port NAME to leave alone: no socket, never opened towards the host (repeatable)")
	f.sysfs = fl.String("sysfs", "/sys", "sysfs root (for tests)")
	f.cpuProfile = fl.String("cpuprofile", "", "write a CPU profile of the run to this file")
	fl.MarkHidden("sysfs")
	fl.MarkHidden("cpuprofile")
	fl.Usage = func() {}
	return f
}

// sockets checks where the sockets go and their modes.
func (f *runFlags) sockets(cfg *runConfig) error {
	const cmd = "run"
	var err error
	if cfg.Agent.SocketDir, err = checkDir(cmd, "--socket-dir", *f.socketDir); err != nil {
		return err
	}
	if cfg.Agent.SocketMode, err = parseMode(cmd, "--socket-mode", *f.socketMode, 0o600, agent.DefaultSocketMode); err != nil {
		return err
	}
	if cfg.Agent.ControlMode, err = parseMode(cmd, "--control-mode", *f.controlMode, 0o600, agent.DefaultControlMode); err != nil {
		return err
	}
	if cfg.Agent.DirMode, err = parseMode(cmd, "--dir-mode", *f.dirMode, 0o700, agent.DefaultDirMode); err != nil {
		return err
	}
	return nil
}

// functions checks which functions to drive and how to bind them.
func (f *runFlags) functions(cfg *runConfig) error {
	const cmd = "run"
	seen := map[string]bool{}
	for _, d := range *f.devices {
		a, err := pciscan.ParseAddr(d)
		if err != nil {
			return usagef(cmd, "--device %q: not a PCI address (want DDDD:BB:DD.F, e.g. 0000:00:03.0)", d)
		}
		if seen[a] {
			return usagef(cmd, "--device %s given twice", a)
		}
		seen[a] = true
		cfg.Devices = append(cfg.Devices, a)
	}
	switch *f.bind {
	case bindUIO, bindVFIO, bindAuto:
		cfg.Bind = *f.bind
	default:
		return usagef(cmd, "--bind %q: want uio, vfio or auto", *f.bind)
	}
	return nil
}

// dataPlane checks the device and data-plane limits and policies.
func (f *runFlags) dataPlane(cfg *runConfig) error {
	const cmd = "run"
	var err error
	if *f.maxPorts < 0 || *f.maxPorts > driver.MaxPorts {
		return usagef(cmd, "--max-ports %d: want 0 (as many as the device offers) to %d", *f.maxPorts, driver.MaxPorts)
	}
	cfg.MaxPorts = *f.maxPorts
	if cfg.DMABudget, err = parseBytes(*f.dmaBudget, minDMABudget, maxDMABudget); err != nil {
		return usagef(cmd, "--dma-budget %q: %v", *f.dmaBudget, err)
	}
	if cfg.Ring, err = driver.ParseRingLayout(*f.ringLayout); err != nil {
		return usagef(cmd, "--ring %q: want auto, split or packed", *f.ringLayout)
	}
	if cfg.Poll, err = pump.ParsePoll(*f.poll); err != nil {
		return usagef(cmd, "--%v", err)
	}
	if cfg.Nice, err = parseNice(*f.nice, runtime.NumCPU()); err != nil {
		return usagef(cmd, "--nice %q: %v", *f.nice, err)
	}
	if *f.clientSndbuf != "0" {
		if cfg.ClientSendBuffer, err = parseBytes(*f.clientSndbuf, minClientSendBuffer, maxClientSendBuffer); err != nil {
			return usagef(cmd, "--client-send-buffer %q: %v (or 0)", *f.clientSndbuf, err)
		}
	}
	if *f.shutdownFlush < 0 || *f.shutdownFlush > maxShutdownFlush {
		return usagef(cmd, "--shutdown-flush %v: want 0 to %v", *f.shutdownFlush, maxShutdownFlush)
	}
	cfg.WaitDevices = *f.waitDevices
	cfg.Nodes = *f.nodes
	cfg.ShutdownFlush = *f.shutdownFlush
	if cfg.ShutdownFlush == 0 {
		cfg.ShutdownFlush = -1 // driver.Config.CloseFlush: no wait
	}
	return nil
}

// consoles checks what console ports get.
func (f *runFlags) consoles(cfg *runConfig) error {
	const cmd = "run"
	cfg.Agent.Console.PTY = *f.consolePTY
	if f.fl.Changed("console-exec") {
		argv := strings.Fields(*f.consoleExec)
		if len(argv) == 0 {
			return usagef(cmd, "--console-exec: empty command")
		}
		if !filepath.IsAbs(argv[0]) {
			return usagef(cmd, "--console-exec %q: give the program as an absolute path", argv[0])
		}
		cfg.Agent.Console.Exec = argv
		cfg.Agent.Console.PTY = true
	}
	if *f.consoleMax < 1 || *f.consoleMax > 64 {
		return usagef(cmd, "--console-max %d: want 1 to 64", *f.consoleMax)
	}
	cfg.Agent.Console.MaxPerDevice = *f.consoleMax
	if len(*f.consoleEnv) > 0 {
		env, err := consoleEnvironment(*f.consoleEnv)
		if err != nil {
			return usagef(cmd, "--console-env: %v", err)
		}
		cfg.Agent.Console.Env = env
	}
	return nil
}

// rest checks logging, sysfs, the port configuration and profiling.
func (f *runFlags) rest(cfg *runConfig) error {
	const cmd = "run"
	var err error
	if cfg.LogLevel, err = parseLevel(cmd, *f.logLevel); err != nil {
		return err
	}
	if cfg.Sysfs, err = checkDir(cmd, "--sysfs", *f.sysfs); err != nil {
		return err
	}
	pcs, err := loadPortConfigs(*f.configFile, *f.portFlags, *f.ignoreFlags, systemLookups)
	if err != nil {
		return &usageError{cmd, err}
	}
	cfg.Agent.Default, cfg.Agent.Ports = pcs.Default, pcs.Ports
	cfg.CPUProfile = *f.cpuProfile
	return nil
}

// consoleEnvironment is agent.MinimalEnv with each KEY=VALUE of extra
// added, or replacing the variable of the same name.
func consoleEnvironment(extra []string) ([]string, error) {
	env := slices.Clone(agent.MinimalEnv)
	for _, kv := range extra {
		k, _, ok := strings.Cut(kv, "=")
		if !ok || k == "" || strings.ContainsAny(k, " \t\x00") || strings.ContainsRune(kv, 0) {
			return nil, fmt.Errorf("%q: want KEY=VALUE", kv)
		}
		env = slices.DeleteFunc(env, func(e string) bool { return strings.HasPrefix(e, k+"=") })
		env = append(env, kv)
	}
	return env, nil
}

// parseList turns `list` arguments into a listConfig.
func parseList(args []string, out io.Writer) (listConfig, error) {
	const cmd = "list"
	fl := pflag.NewFlagSet(cmd, pflag.ContinueOnError)
	fl.SetOutput(io.Discard)
	socketDir := fl.String("socket-dir", agent.DefaultSocketDir, "socket directory of the agent to ask for its ports")
	asJSON := fl.Bool("json", false, "print JSON instead of text")
	sysfs := fl.String("sysfs", "/sys", "sysfs root (for tests)")
	fl.MarkHidden("sysfs")
	fl.Usage = func() {}
	if err := fl.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			fmt.Fprint(out, listUsage+fl.FlagUsages())
			return listConfig{}, err
		}
		return listConfig{}, &usageError{cmd, err}
	}
	if fl.NArg() > 0 {
		return listConfig{}, usagef(cmd, "unexpected argument %q (list takes only flags)", fl.Arg(0))
	}
	cfg := listConfig{JSON: *asJSON}
	var err error
	if cfg.SocketDir, err = checkDir(cmd, "--socket-dir", *socketDir); err != nil {
		return listConfig{}, err
	}
	if cfg.Sysfs, err = checkDir(cmd, "--sysfs", *sysfs); err != nil {
		return listConfig{}, err
	}
	return cfg, nil
}

// checkDir checks a directory flag and makes it absolute.
func checkDir(cmd, flag, v string) (string, error) {
	if strings.TrimSpace(v) == "" {
		return "", usagef(cmd, "%s: empty path", flag)
	}
	if strings.ContainsRune(v, 0) {
		return "", usagef(cmd, "%s %q: contains a NUL byte", flag, v)
	}
	abs, err := filepath.Abs(v)
	if err != nil {
		return "", usagef(cmd, "%s %q: %v", flag, v, err)
	}
	return abs, nil
}

// parseMode parses an octal permission such as 0660 or 660 and checks that
// it grants the owner at least need.
func parseMode(cmd, flag, v string, need, example fs.FileMode) (fs.FileMode, error) {
	s := strings.TrimPrefix(strings.TrimPrefix(v, "0o"), "0O")
	m, err := strconv.ParseUint(s, 8, 32)
	if err != nil || s == "" {
		return 0, usagef(cmd, "%s %q: not an octal permission (want e.g. %04o)", flag, v, example)
	}
	if m > 0o777 {
		return 0, usagef(cmd, "%s %q: only permission bits (at most 0777) are allowed", flag, v)
	}
	mode := fs.FileMode(m)
	if mode&need != need {
		return 0, usagef(cmd, "%s %q: the owner needs at least %04o", flag, v, need)
	}
	return mode, nil
}

// DMA budget bounds: below minDMABudget not even one port fits beside the
// control queues; maxDMABudget is far beyond any guest.
const (
	minDMABudget = 1 << 20
	maxDMABudget = 1 << 40
)

// parseBytes parses a byte count: a number, optionally followed by K, M or
// G (KiB, MiB, GiB: powers of 1024), from lo to hi.
func parseBytes(v string, lo, hi int) (int, error) {
	num, unit := v, ""
	if i := strings.IndexFunc(v, func(r rune) bool { return r < '0' || r > '9' }); i >= 0 {
		num, unit = v[:i], v[i:]
	}
	shift, ok := map[string]uint{"": 0, "K": 10, "KiB": 10, "M": 20, "MiB": 20, "G": 30, "GiB": 30}[unit]
	n, err := strconv.ParseInt(num, 10, 64)
	if !ok || err != nil {
		return 0, errors.New("want a byte count such as 133MiB, 512K or 1073741824")
	}
	if n > int64(hi)>>shift || int(n<<shift) < lo {
		return 0, fmt.Errorf("want %s to %s", formatBytes(lo), formatBytes(hi))
	}
	return int(n << shift), nil
}

// formatBytes writes n in the largest unit parseBytes reads back exactly.
func formatBytes(n int) string {
	for _, u := range []struct {
		shift uint
		name  string
	}{{30, "GiB"}, {20, "MiB"}, {10, "KiB"}} {
		if n >= 1<<u.shift && n%(1<<u.shift) == 0 {
			return fmt.Sprintf("%d%s", n>>u.shift, u.name)
		}
	}
	return strconv.Itoa(n)
}

func parseLevel(cmd, v string) (slog.Level, error) {
	switch strings.ToLower(v) {
	case "debug":
		return slog.LevelDebug, nil
	case "info":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, usagef(cmd, "--log-level %q: want debug, info, warn or error", v)
}

// bindChoice is the binding --bind auto takes for one function, and why
// (devopen.Choose decides; list shows it).
type bindChoice = devopen.Choice
