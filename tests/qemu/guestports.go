package qemu

// The guest's virtio-serial ports from the host: finding a port, dialing
// its chardev socket, and hot-plugging or unplugging one through QMP.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"testing"
)

// Port returns the port with the given name (with Nr and ID filled in); an
// unnamed port is looked up by its ID.
func (g *Guest) Port(name string) (Port, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	p, ok := g.ports[name]
	return p, ok
}

// PortSocket is the host socket QEMU listens on for the named port (an
// unnamed one: by ID).
func (g *Guest) PortSocket(name string) string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.socks[name]
}

// DialPort connects to the named port's host socket, which makes the port
// host-connected for the guest. QEMU serves one connection per port at a
// time. The connection is closed when the test ends.
func (g *Guest) DialPort(t testing.TB, name string) *net.UnixConn {
	t.Helper()
	sock := g.PortSocket(name)
	if sock == "" {
		t.Fatalf("guest: no port named %q", name)
	}
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatalf("guest: port %s: %v", name, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// HotplugPort adds a port to the running device (chardev-add + device_add)
// and returns it with Nr and ID filled in; Nr must be set. A port without a
// Name is hot-plugged without one and known by its ID.
func (g *Guest) HotplugPort(ctx context.Context, p Port) (Port, error) {
	if p.Nr == 0 {
		return p, errors.New("guest: hot-plugged ports need an explicit Nr")
	}
	p = g.addPort(p, p.Nr)
	chardev := fmt.Sprintf("c%d", p.Nr)
	_, err := g.QMP.Execute(ctx, "chardev-add", map[string]any{
		"id": chardev,
		"backend": map[string]any{"type": "socket", "data": map[string]any{
			"addr":   map[string]any{"type": "unix", "data": map[string]any{"path": g.PortSocket(p.key())}},
			"server": true, "wait": false,
		}},
	})
	if err != nil {
		return p, err
	}
	dev := map[string]any{
		"driver": p.device(), "bus": "vs0.0", "chardev": chardev,
		"nr": p.Nr, "id": p.ID,
	}
	if p.Name != "" {
		dev["name"] = p.Name
	}
	_, err = g.QMP.Execute(ctx, "device_add", dev)
	return p, err
}

// UnplugPort removes a port (device_del, wait for DEVICE_DELETED,
// chardev-remove).
func (g *Guest) UnplugPort(ctx context.Context, name string) error {
	p, ok := g.Port(name)
	if !ok {
		return fmt.Errorf("guest: no port named %q", name)
	}
	mark := g.QMP.Mark()
	if _, err := g.QMP.Execute(ctx, "device_del", map[string]any{"id": p.ID}); err != nil {
		return err
	}
	if _, _, err := g.QMP.WaitEvent(ctx, mark, "DEVICE_DELETED", func(e Event) bool {
		return bytes.Contains(e.Data, []byte(strconv.Quote(p.ID)))
	}); err != nil {
		return err
	}
	if _, err := g.QMP.Execute(ctx, "chardev-remove", map[string]any{"id": fmt.Sprintf("c%d", p.Nr)}); err != nil {
		return err
	}
	g.mu.Lock()
	delete(g.ports, p.key())
	delete(g.socks, p.key())
	g.mu.Unlock()
	return nil
}
