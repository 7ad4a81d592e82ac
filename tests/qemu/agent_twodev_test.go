package qemu

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// TestAgentTwoDevices runs vserial-agent on a guest with two
// virtio-serial-pci functions: the agent drives both, names unnamed ports
// by device index (vport1pN for the second), and moves data on both at
// once.
func TestAgentTwoDevices(t *testing.T) {
	t.Parallel()
	// The second device is built by hand: the harness manages vs0 only.
	dir, err := os.MkdirTemp("/tmp", "vsd-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	named1, unnamed1 := filepath.Join(dir, "n.sock"), filepath.Join(dir, "u.sock")
	extra := []string{
		"-device", "virtio-serial-pci,id=vs1,max_ports=4",
		"-chardev", "socket,id=d1,path=" + named1 + ",server=on,wait=off",
		"-device", "virtserialport,bus=vs1.0,chardev=d1,nr=1,id=dev1port1,name=org.vserial.second",
		"-chardev", "socket,id=d2,path=" + unnamed1 + ",server=on,wait=off",
		"-device", "virtserialport,bus=vs1.0,chardev=d2,nr=2,id=dev1port2",
	}
	const first = "org.vserial.first"
	socks := []string{first, "org.vserial.second", "vport1p2"}
	a := bootAgent(t, Options{Ports: []Port{{Name: first}}, MaxPorts: 4, ExtraArgs: extra}, socks...)
	g := a.g
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	dial := func(path string) net.Conn {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	conns := []net.Conn{g.DialPort(t, first), dial(named1), dial(unnamed1)}

	t.Run("list-both-devices", func(t *testing.T) {
		l, _, err := a.list(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(l.Functions) != 2 {
			t.Errorf("list shows %d virtio-console functions, want 2: %+v", len(l.Functions), l.Functions)
		}
		want := map[string]struct {
			dev int
			id  uint32
		}{first: {0, 1}, "org.vserial.second": {1, 1}, "vport1p2": {1, 2}}
		for s, w := range want {
			p, ok := l.port(AgentSocket(s))
			if !ok || p.Device != w.dev || p.ID != w.id {
				t.Errorf("port %s: %+v (found %v), want device %d id %d", s, p, ok, w.dev, w.id)
			}
		}
		for _, p := range l.Agent.Ports {
			t.Logf("list: dev %d id %d name %q socket %s", p.Device, p.ID, p.Name, p.Socket)
		}
	})

	t.Run("data-on-both-devices-at-once", func(t *testing.T) {
		var wg sync.WaitGroup
		for i, s := range socks {
			wg.Go(func() {
				for j, n := range []int64{1, 4<<10 + 1, 2 << 20} {
					if err := both(ctx, t, g, conns[i], AgentSocket(s), n, uint64(700+10*i+j)); err != nil {
						t.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
	})

	t.Run("sigterm", func(t *testing.T) {
		out, err := a.stop(ctx)
		if err != nil {
			t.Fatalf("vserial-agent after SIGTERM: %v, want exit 0\n%s", err, out)
		}
		for _, s := range socks {
			if _, err := g.Run(ctx, "wait-gone", AgentSocket(s), "10"); err != nil {
				t.Error(err)
			}
		}
	})
}
