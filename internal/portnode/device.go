package portnode

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vserial/vserial/cuse"
	"github.com/vserial/vserial/driver"
	"github.com/vserial/vserial/internal/guard"
	"github.com/vserial/vserial/pump"
)

// Config says where and for which ports one device's nodes are made.
type Config struct {
	// Dev is where devtmpfs is mounted ("" : /dev); the nodes appear
	// there and the symlinks go in Dev/virtio-ports.
	Dev string
	// Sys is where sysfs is mounted ("" : /sys).
	Sys string
	// CUSE is the CUSE channel ("" : Dev/cuse).
	CUSE string
	// Index is the agent's index of the device (the D of its sockets'
	// vport<D>p<ID> names). The nodes take NodeBase+Index, or the next
	// index no kernel-driven virtio-ports device uses.
	Index int
	// Want says whether the port gets a node; name is the host's name
	// of the port, or vport<Index>p<ID> while it has none (the name its
	// socket configuration is looked up by).
	Want   func(name string) bool
	Logger *slog.Logger
	// Failed, when not nil, hears of a node that could not be made.
	Failed func(port uint32, reason string)
}

// retryWait is how long a port whose node could not be made waits before
// the next try.
const retryWait = 2 * time.Second

// NodeBase is the first node index: far above the index of any
// virtio device the kernel drives in a guest, so that vserial's
// /dev/vport<D>p<ID> never takes a kernel port's name.
const NodeBase = 100

// Device makes and removes the nodes of one virtio-console device.
type Device struct {
	cfg   Config
	log   *slog.Logger
	node  int // D of the nodes' names
	ctx   context.Context
	stop  context.CancelFunc
	wg    sync.WaitGroup
	mu    sync.Mutex
	ports []*Port
}

// indexes are the node indexes the process has taken.
var indexes = struct {
	sync.Mutex
	taken map[int]bool
}{taken: map[int]bool{}}

// NewDevice prepares the nodes of one device: it picks the node index
// (released by Close).
func NewDevice(cfg Config) *Device {
	if cfg.Dev == "" {
		cfg.Dev = "/dev"
	}
	if cfg.Sys == "" {
		cfg.Sys = "/sys"
	}
	if cfg.CUSE == "" {
		cfg.CUSE = filepath.Join(cfg.Dev, "cuse")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	d := &Device{cfg: cfg}
	d.node = pickIndex(cfg)
	d.log = cfg.Logger.With("dev", cfg.Index, "node_index", d.node)
	d.ctx, d.stop = context.WithCancel(context.Background())
	return d
}

// pickIndex takes the first index from NodeBase+Index on that neither
// this process nor a kernel-driven port (a /dev/vport<D>p* node or a
// /sys/class/virtio-ports/vport<D>p* entry) uses.
func pickIndex(cfg Config) int {
	indexes.Lock()
	defer indexes.Unlock()
	for d := NodeBase + cfg.Index; ; d++ {
		if indexes.taken[d] {
			continue
		}
		pat := fmt.Sprintf("vport%dp*", d)
		a, _ := filepath.Glob(filepath.Join(cfg.Dev, pat))
		b, _ := filepath.Glob(filepath.Join(cfg.Sys, "class", "virtio-ports", pat))
		if len(a)+len(b) > 0 {
			continue
		}
		indexes.taken[d] = true
		return d
	}
}

// NodeIndex is the D of the device's /dev/vport<D>p<ID> nodes.
func (d *Device) NodeIndex() int { return d.node }

// NodeName is the node name of port id: vport<D>p<ID>.
func (d *Device) NodeName(id uint32) string { return fmt.Sprintf("vport%dp%d", d.node, id) }

// Add takes a port of the device: the returned Port is what the socket
// side opens (SetGuestOpen), and it gets a node whenever Want says so,
// until the port goes or Close.
func (d *Device) Add(p *driver.Port, loop *pump.Loop) *Port {
	pt := NewPort(p, loop, d.log)
	d.mu.Lock()
	d.ports = append(d.ports, pt)
	d.mu.Unlock()
	d.wg.Add(1)
	go d.follow(pt)
	return pt
}

// closeGrace bounds how long Close waits for programs that hold a node
// open to let go, once told the port is gone.
const closeGrace = time.Second

// Close removes every node and symlink of the device and waits for them.
// A program that holds a node open is first told, as of an unplug, that
// the port is gone (ENODEV, POLLHUP), and given closeGrace to close it
// before the device goes from under it.
func (d *Device) Close() {
	d.mu.Lock()
	ports := slices.Clone(d.ports)
	d.mu.Unlock()
	var open []*Port
	for _, pt := range ports {
		if pt.stop() {
			open = append(open, pt)
		}
	}
	if len(open) > 0 {
		d.log.Info("telling the programs that hold device nodes that their ports are gone", "open", len(open))
		ctx, cancel := context.WithTimeout(context.Background(), closeGrace)
		for _, pt := range open {
			pt.awaitClose(ctx)
		}
		cancel()
	}
	d.stop()
	d.wg.Wait()
	indexes.Lock()
	delete(indexes.taken, d.node)
	indexes.Unlock()
}

// follow gives pt a node while Want says so and the port is there, and
// keeps its symlink on the port's name.
func (d *Device) follow(pt *Port) {
	defer guard.Recover()
	defer d.wg.Done()
	n := &nodeState{d: d, pt: pt}
	for {
		ch := pt.p.Changed()
		removed := pt.p.Removed()
		name := pt.p.Name()
		key := name
		if key == "" {
			key = fmt.Sprintf("vport%dp%d", d.cfg.Index, pt.p.ID())
		}
		want := !removed && d.cfg.Want != nil && d.cfg.Want(key)
		n.reconcile(want, name, removed)
		if removed {
			return
		}
		// A node that could not be made is tried again (the name of an
		// unplugged port's node may still be held by an open file).
		var retry <-chan time.Time
		if want && n.srv == nil {
			retry = time.After(retryWait)
		}
		select {
		case <-ch:
		case <-retry:
		case <-d.ctx.Done():
			n.reconcile(false, "", false)
			return
		}
	}
}

// nodeState is what follow made for one port.
type nodeState struct {
	d      *Device
	pt     *Port
	srv    *cuse.Server
	served chan struct{} // closed when srv.Serve returned
	link   string        // the symlink made, "" if none
	failed string        // the last failure reported
}

func (n *nodeState) nodePath() string {
	return filepath.Join(n.d.cfg.Dev, n.d.NodeName(n.pt.p.ID()))
}

// reconcile makes the node and symlink match want and name.
func (n *nodeState) reconcile(want bool, name string, removed bool) {
	if !want {
		n.setLink("")
		if n.srv != nil {
			n.teardown(removed)
		}
		return
	}
	if n.srv == nil {
		if err := n.create(); err != nil {
			if msg := err.Error(); msg != n.failed {
				n.failed = msg
				n.d.log.Error("cannot make the port's device node; the port keeps its socket", "port", n.pt.p.ID(), "err", err)
				if n.d.cfg.Failed != nil {
					n.d.cfg.Failed(n.pt.p.ID(), msg)
				}
			}
			return
		}
		n.failed = ""
	}
	n.setLink(name)
}

// create registers the node through CUSE.
func (n *nodeState) create() error {
	if err := EnsureCUSE(n.d.cfg.CUSE, n.d.cfg.Sys, n.d.log); err != nil {
		return err
	}
	name := n.d.NodeName(n.pt.p.ID())
	srv, err := cuse.Open(n.d.cfg.CUSE, cuse.Config{Name: name, Logger: n.d.log}, n.pt)
	if err != nil {
		return err
	}
	served := make(chan struct{})
	var serveErr error
	go func() {
		defer guard.Recover()
		defer close(served)
		serveErr = srv.Serve()
	}()
	t := time.NewTimer(5 * time.Second)
	defer t.Stop()
	select {
	case <-srv.Ready():
	case <-served:
		return fmt.Errorf("cuse %s: %v", name, serveErr)
	case <-t.C:
		srv.Close()
		<-served
		return fmt.Errorf("cuse %s: the kernel did not ask for the device within 5s", name)
	}
	// The kernel registered the device when it took the answer to
	// CUSE_INIT; devtmpfs made the node (if /dev is not devtmpfs, make
	// it from sysfs).
	if err := n.ensureNode(name); err != nil {
		srv.Close()
		<-served
		return err
	}
	n.pt.mu.Lock()
	n.pt.srv = srv
	n.pt.gone = false
	n.pt.mu.Unlock()
	n.srv, n.served = srv, served
	n.d.log.Info("device node made", "port", n.pt.p.ID(), "node", n.nodePath())
	return nil
}

// ensureNode waits briefly for /dev/NAME, or makes it from the device
// number sysfs shows when /dev is not devtmpfs.
func (n *nodeState) ensureNode(name string) error {
	path := n.nodePath()
	for range 50 {
		if _, err := os.Lstat(path); err == nil {
			return nil
		}
		if err := mknodFromSysfs(filepath.Join(n.d.cfg.Sys, "class", "cuse", name, "dev"), path); err == nil {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("cuse %s: no node appeared at %s", name, path)
}

// teardown removes the node. A port unplugged under an open file keeps
// serving that file as Linux serves an unplugged port (reads and writes
// ENODEV, poll POLLHUP) until it is closed, with its node already
// unlinked.
func (n *nodeState) teardown(removed bool) {
	srv, served := n.srv, n.served
	n.srv, n.served = nil, nil
	pt := n.pt
	pt.mu.Lock()
	open := pt.f != nil || pt.releasing != nil
	if removed && open {
		pt.gone = true
		pt.mu.Unlock()
		os.Remove(n.nodePath())
		n.d.log.Info("device node removed; its open file is served until closed", "port", pt.p.ID())
		n.d.wg.Add(1)
		go func() {
			defer guard.Recover()
			defer n.d.wg.Done()
			pt.awaitClose(n.d.ctx)
			srv.Close()
			<-served
			// Closed by Close with the file still open: the kernel
			// sends no release for it now.
			pt.forceRelease()
		}()
		return
	}
	pt.srv = nil
	pt.mu.Unlock()
	srv.Close()
	<-served
	pt.forceRelease()
	n.d.log.Info("device node removed", "port", pt.p.ID())
}

// setLink points Dev/virtio-ports/NAME at the node (name "": no link),
// removing the previous link. A file at that path the agent did not make
// is left alone.
func (n *nodeState) setLink(name string) {
	dir := filepath.Join(n.d.cfg.Dev, "virtio-ports")
	want := ""
	if name != "" && n.srv != nil && validLinkName(name) {
		want = filepath.Join(dir, name)
	}
	if want == n.link {
		return
	}
	target := filepath.Join("..", n.d.NodeName(n.pt.p.ID()))
	if n.link != "" {
		if t, err := os.Readlink(n.link); err == nil && t == target {
			os.Remove(n.link)
		}
		n.link = ""
	}
	if want == "" {
		return
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		n.d.log.Warn("cannot make the symlink directory", "dir", dir, "err", err)
		return
	}
	if t, err := os.Readlink(want); err == nil && t != target {
		// A stale link of ours points at a node that is gone: replace it.
		if _, serr := os.Stat(want); serr == nil || !strings.HasPrefix(filepath.Base(t), "vport") {
			n.d.log.Warn("symlink path taken; the node has no name link", "link", want, "points_to", t)
			return
		}
		os.Remove(want)
	}
	if err := os.Symlink(target, want); err != nil && !errors.Is(err, os.ErrExist) {
		n.d.log.Warn("cannot make the port's symlink", "link", want, "err", err)
		return
	}
	n.link = want
	n.d.log.Info("port symlink made", "link", want, "node", n.nodePath())
}

// validLinkName reports whether a host-chosen name can be a file name.
func validLinkName(name string) bool {
	if name == "." || name == ".." || len(name) > 255 || strings.ContainsRune(name, '/') {
		return false
	}
	for _, c := range []byte(name) {
		if c < 0x20 || c == 0x7f {
			return false
		}
	}
	return true
}
