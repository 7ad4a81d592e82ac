package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"
)

// Defaults for Config fields left zero.
const (
	DefaultSocketDir              = "/run/vserial"
	DefaultSocketMode fs.FileMode = 0o660
	DefaultDirMode    fs.FileMode = 0o755
	// DefaultControlMode is the control socket's: it tells who connects
	// to the ports (peer pids and uids), so only the agent's user by
	// default.
	DefaultControlMode fs.FileMode = 0o600
)

// ControlName is the file name of the control socket in the socket directory.
const ControlName = ".control"

var (
	// ErrClosed is returned by methods of an Agent after Close.
	ErrClosed = errors.New("agent: closed")
	// ErrUnsafeDir is wrapped by New when the socket directory is a symbolic
	// link, not a directory, owned by another user, or writable by everyone
	// without the sticky bit (and by the creation of a socket in such a
	// directory).
	ErrUnsafeDir = errors.New("unsafe socket directory")
	// ErrBusy is wrapped by New when another agent holds the directory
	// (its lock, or an answer on the control socket).
	ErrBusy = errors.New("socket directory in use by another agent")
)

// Config configures an Agent. The zero value of each field selects its
// default.
type Config struct {
	// SocketDir is where the port sockets are created (default
	// DefaultSocketDir). It is created with DirMode if missing.
	SocketDir string
	// SocketMode is the permission of every socket file (default 0660).
	SocketMode fs.FileMode
	// ControlMode is the permission of the control socket (default
	// DefaultControlMode, 0600).
	ControlMode fs.FileMode
	// DirMode is the permission SocketDir gets when New creates it (default
	// 0755). An existing directory keeps its mode.
	DirMode fs.FileMode
	// Logger receives one line per event (default slog.Default()).
	Logger *slog.Logger
	// Ports configures ports by name: the name the host gave, or
	// vport<D>p<ID> for a port without one. Ports not listed get Default.
	Ports map[string]PortConfig
	// Default configures every port Ports does not name.
	Default PortConfig
	// RedialMin and RedialMax bound the wait between dials of a connect
	// port (defaults DefaultRedialMin, DefaultRedialMax).
	RedialMin, RedialMax time.Duration
	// Console says what console ports get besides their socket (default:
	// nothing; see ConsoleConfig).
	Console ConsoleConfig
}

// PortStatus describes one port. It is also the JSON form of a port on the
// control socket (the status answer, the snapshot of an event stream) and
// in `vserial-agent list --json`.
type PortStatus struct {
	Device          int    `json:"device"`
	ID              uint32 `json:"id"`
	Name            string `json:"name"` // the name the host gave, "" if none
	Mode            Mode   `json:"mode"`
	Socket          string `json:"socket"`           // path of the socket, "" if the port has none
	Target          string `json:"target,omitempty"` // connect mode: the socket dialed
	HostConnected   bool   `json:"host_connected"`
	ClientConnected bool   `json:"client_connected"` // a client (listen) or the dialed connection (connect) is up
	PortStats              // the counters, inline in JSON
	RejectedClients uint64 `json:"rejected_clients"`
	// NameProblem says why Socket is not named after Name: the name is
	// unusable as a file name, or another port (of any device) already
	// has a socket of that name (a clash). "" when there is none.
	NameProblem string `json:"name_problem,omitempty"`
}

// Agent publishes ports as Unix sockets. Its methods are safe for concurrent
// use.
type Agent struct {
	dir                  string
	sockMode, ctlMode    fs.FileMode
	log                  *slog.Logger
	maxName              int // longest socket name that fits sun_path with dir
	portCfgs             map[string]PortConfig
	defCfg               PortConfig
	redialMin, redialMax time.Duration
	console              ConsoleConfig

	ctx    context.Context // ends at Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // every goroutine the agent starts

	mu       sync.Mutex
	closed   bool
	ports    map[portKey]*port
	owners   map[string]*port // socket file name → the port publishing it
	controls map[net.Listener]bool
	ctlLn    net.Listener          // created by ListenControl
	devices  func() []DeviceStatus // SetDevices

	lock       *os.File // the socket directory, flocked (lockDir)
	unlockOnce sync.Once

	ev events // the control socket's event streams (events.go)

	afterBind func(path string) // a seam for tests (listenAt)

	ctl controlLimits // the control socket's bounds (limit.go)
}

type portKey struct {
	dev int
	id  uint32
}

// sunPathMax is the longest socket path Linux and Go accept: sun_path is 108
// bytes and Go requires room for the terminating NUL.
const sunPathMax = 107

// tmpNameLen is the length of the name of the private directories sockets
// are bound in (".new-" and 8 hex digits), tmpPathLen that of the path of
// the socket in it relative to the socket directory.
const (
	tmpNameLen = 13
	tmpPathLen = tmpNameLen + 1 + len(tmpSockName)
)

// New prepares the socket directory and returns an agent with no ports.
func New(cfg Config) (*Agent, error) {
	portCfgs, dir, maxName, err := cfg.check()
	if err != nil {
		return nil, err
	}
	log := cfg.Logger
	if err := prepareDir(dir, cfg.DirMode, log); err != nil {
		return nil, err
	}
	for name, pc := range portCfgs {
		// Checked again at each creation; here so that run fails at once.
		if filepath.IsAbs(pc.Socket) {
			if err := checkParent(filepath.Dir(pc.Socket)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return nil, fmt.Errorf("agent: port %q: socket %s: %w", name, pc.Socket, err)
			}
		}
	}
	a := &Agent{
		dir:       dir,
		sockMode:  cfg.SocketMode,
		ctlMode:   cfg.ControlMode,
		log:       log,
		maxName:   maxName,
		portCfgs:  portCfgs,
		defCfg:    cfg.Default,
		console:   cfg.Console,
		redialMin: cfg.RedialMin,
		redialMax: cfg.RedialMax,
		ports:     make(map[portKey]*port),
		owners:    make(map[string]*port),
		controls:  make(map[net.Listener]bool),
	}
	a.initControlLimits()
	// Nothing in the directory is touched before it is ours: a second
	// agent started on it by mistake must leave the first one's sockets
	// and console links alone.
	if a.lock, err = lockDir(dir); err != nil {
		return nil, err
	}
	if err := a.removeStale(); err != nil {
		a.lock.Close()
		return nil, err
	}
	a.removeStaleLinks()
	a.ctx, a.cancel = context.WithCancel(context.Background())
	return a, nil
}

// check fills in cfg's defaults and validates it: the port
// configurations by name, the socket directory's absolute path and the
// longest socket name it leaves room for.
func (cfg *Config) check() (portCfgs map[string]PortConfig, dir string, maxName int, err error) {
	if cfg.SocketDir == "" {
		cfg.SocketDir = DefaultSocketDir
	}
	if cfg.SocketMode == 0 {
		cfg.SocketMode = DefaultSocketMode
	}
	if cfg.DirMode == 0 {
		cfg.DirMode = DefaultDirMode
	}
	if cfg.ControlMode == 0 {
		cfg.ControlMode = DefaultControlMode
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.RedialMin <= 0 {
		cfg.RedialMin = DefaultRedialMin
	}
	if cfg.RedialMax <= 0 {
		cfg.RedialMax = DefaultRedialMax
	}
	if cfg.RedialMax < cfg.RedialMin {
		return nil, "", 0, fmt.Errorf("agent: redial max %v is below redial min %v", cfg.RedialMax, cfg.RedialMin)
	}
	if err := cfg.Default.Check(); err != nil {
		return nil, "", 0, fmt.Errorf("agent: default port configuration: %w", err)
	}
	if cfg.Default.effectiveMode() == ModeConnect {
		return nil, "", 0, errors.New("agent: default port configuration: mode connect needs a port of its own (one target per port)")
	}
	portCfgs = make(map[string]PortConfig, len(cfg.Ports))
	for name, pc := range cfg.Ports {
		if err := pc.Check(); err != nil {
			return nil, "", 0, fmt.Errorf("agent: port %q: %w", name, err)
		}
		portCfgs[name] = pc
	}
	if (cfg.SocketMode|cfg.DirMode|cfg.ControlMode)&^fs.ModePerm != 0 {
		return nil, "", 0, fmt.Errorf("agent: socket mode %v, control mode %v and dir mode %v must be plain permission bits (at most 0777)", cfg.SocketMode, cfg.ControlMode, cfg.DirMode)
	}
	dir, err = filepath.Abs(cfg.SocketDir)
	if err != nil {
		return nil, "", 0, fmt.Errorf("agent: socket dir %q: %w", cfg.SocketDir, err)
	}
	maxName = sunPathMax - len(dir) - 1
	if maxName < tmpPathLen {
		return nil, "", 0, fmt.Errorf("agent: socket dir %s: path too long for Unix sockets (%d bytes; at most %d)", dir, len(dir), sunPathMax-1-tmpPathLen)
	}
	if err := cfg.Console.check(); err != nil {
		return nil, "", 0, err
	}
	return portCfgs, dir, maxName, nil
}

// Dir returns the absolute path of the socket directory.
func (a *Agent) Dir() string { return a.dir }

// AddPort publishes p, a port of device dev (an index the caller chooses,
// used in vport<dev>p<id> names). The socket exists when AddPort returns
// (unless creating it failed, which is logged). A port whose previous
// incarnation was removed may be added again.
func (a *Agent) AddPort(dev int, p Port) error {
	if p == nil {
		return errors.New("agent: add port: nil port")
	}
	if dev < 0 {
		return fmt.Errorf("agent: add port: negative device index %d", dev)
	}
	key := portKey{dev, p.ID()}
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return ErrClosed
	}
	if old := a.ports[key]; old != nil {
		if old.p == p || !old.p.Removed() {
			a.mu.Unlock()
			return fmt.Errorf("agent: add port: device %d already has port %d", dev, p.ID())
		}
		a.dropLocked(old, "replaced by a new port with the same id")
	}
	pt := newPort(a, dev, p)
	a.ports[key] = pt
	a.wg.Add(1)
	a.mu.Unlock()

	pt.log.Info("port added", "name", p.Name(), "host_connected", p.HostConnected())
	a.placeSocket(pt)
	a.publish(pt.added())
	go pt.watch()
	return nil
}

// Status returns the state of every port, ordered by device and id.
func (a *Agent) Status() []PortStatus {
	type snap struct {
		pt      *port
		sock    string
		client  bool
		problem string
		cfg     PortConfig
	}
	a.mu.Lock()
	snaps := make([]snap, 0, len(a.ports))
	for _, pt := range a.ports {
		snaps = append(snaps, snap{pt, pt.sock, pt.client != nil, pt.nameProblem, pt.cfg})
	}
	a.mu.Unlock()
	// The ports are asked outside a.mu, so a Port may take its own locks
	// freely.
	out := make([]PortStatus, 0, len(snaps))
	for _, s := range snaps {
		st := PortStatus{
			Device:          s.pt.dev,
			ID:              s.pt.p.ID(),
			Name:            s.pt.p.Name(),
			Mode:            s.cfg.effectiveMode(),
			Socket:          s.sock,
			Target:          s.cfg.Target,
			HostConnected:   s.pt.p.HostConnected(),
			ClientConnected: s.client,
			PortStats:       s.pt.p.Stats(),
			RejectedClients: s.pt.rejected.Load(),
			NameProblem:     s.problem,
		}
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Device != out[j].Device {
			return out[i].Device < out[j].Device
		}
		return out[i].ID < out[j].ID
	})
	return out
}

// Close stops accepting, ends every client session (telling the host the
// guest closed the port), removes the sockets and waits for every goroutine
// the agent started. It is idempotent and always returns nil.
func (a *Agent) Close() error {
	a.mu.Lock()
	if !a.closed {
		a.closed = true
		for _, pt := range a.ports {
			a.dropLocked(pt, "agent closing")
		}
		a.closeEvents()
		for l := range a.controls {
			l.Close()
		}
		if a.ctlLn != nil {
			a.ctlLn.Close()
			os.Remove(filepath.Join(a.dir, ControlName))
		}
		a.cancel()
		a.log.Info("agent closed", "dir", a.dir)
	}
	a.mu.Unlock()
	a.wg.Wait()
	a.unlockOnce.Do(func() { a.lock.Close() })
	return nil
}

// dropLocked unpublishes pt: closes its listener, removes its socket file
// and ends its session. a.mu is held.
func (a *Agent) dropLocked(pt *port, why string) {
	if pt.gone {
		return
	}
	pt.gone = true
	ev := pt.eventLocked(EventPortRemoved)
	ev.Reason = why
	a.publish(ev)
	if pt.con != nil {
		pt.con.closeLocked()
	}
	if a.ports[portKey{pt.dev, pt.p.ID()}] == pt {
		delete(a.ports, portKey{pt.dev, pt.p.ID()})
	}
	if pt.ln != nil {
		a.unpublishLocked(pt)
	}
	pt.cancel() // ends the watcher and the session
	pt.log.Info("port removed", "why", why)
	// A name this port held may be wanted by another port.
	for _, o := range a.ports {
		o.poke()
	}
}

// unpublishLocked closes pt's listener and removes its socket file.
func (a *Agent) unpublishLocked(pt *port) {
	pt.ln.Close()
	if err := os.Remove(pt.sock); err != nil && !errors.Is(err, fs.ErrNotExist) {
		pt.log.Warn("cannot remove socket", "socket", pt.sock, "err", err)
	}
	delete(a.owners, pt.sock)
	pt.ln = nil
	pt.sock = ""
}
