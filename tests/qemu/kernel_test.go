package qemu

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"
)

// vportsByName runs the helper's vports: name → /dev/vportNpM.
func vportsByName(t testing.TB, g *Guest) map[string]string {
	t.Helper()
	devs := map[string]string{}
	for line := range strings.Lines(g.MustRun(t, "vports")) {
		f := strings.Fields(line)
		if len(f) >= 2 {
			devs[f[0]] = f[1]
			if len(f) > 2 {
				t.Logf("%s: device node was missing, created it from sysfs", f[1])
			}
		}
	}
	return devs
}

// waitVport polls until the in-kernel driver shows the named port (present)
// or no longer shows it (!present): ports come and go asynchronously.
func waitVport(ctx context.Context, t testing.TB, g *Guest, name string, present bool) string {
	t.Helper()
	for {
		dev, ok := vportsByName(t, g)[name]
		if ok == present {
			return dev
		}
		select {
		case <-ctx.Done():
			t.Fatalf("port %s present=%v: still not so: %v", name, present, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// kernelPorts loads virtio_pci and virtio_console in the guest and returns
// name → /dev/vportNpM for the in-kernel driver's ports.
func kernelPorts(t testing.TB, g *Guest) map[string]string {
	t.Helper()
	g.MustRun(t, "modprobe", "virtio_pci", "virtio_console")
	return vportsByName(t, g)
}

// TestKernelDriverBaseline proves the harness with the in-kernel
// virtio_console driver, the baseline vserial is compared with: named ports
// appear, data moves byte-exact both ways, and QEMU reports the guest
// opening and closing a port.
func TestKernelDriverBaseline(t *testing.T) {
	t.Parallel() // guests boot in parallel; each has its own sockets
	names := []string{"org.vserial.test.0", "org.vserial.test.1"}
	g := Boot(t, Options{Ports: []Port{{Name: names[0]}, {Name: names[1]}}, MaxPorts: 4})
	devs := kernelPorts(t, g)
	for _, name := range names {
		if devs[name] == "" {
			t.Fatalf("port %s not found in the guest; vports printed %v", name, devs)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()

	t.Run("events", func(t *testing.T) {
		// QEMU rate-limits VSERPORT_CHANGE to one per second per port and
		// keeps only the latest, so the port stays open (sink blocks) until
		// the open event has been seen.
		p, _ := g.Port(names[1])
		conn := g.DialPort(t, names[1])
		mark := g.QMP.Mark()
		proc, err := g.Start(ctx, "sink", devs[names[1]], "1")
		if err != nil {
			t.Fatal(err)
		}
		next, err := g.QMP.WaitPortChange(ctx, mark, p.ID, true)
		if err != nil {
			t.Fatalf("no VSERPORT_CHANGE open=true for %s after the guest opened it: %v", p.ID, err)
		}
		if _, err := conn.Write([]byte{'x'}); err != nil {
			t.Fatal(err)
		}
		if _, err := proc.Wait(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := g.QMP.WaitPortChange(ctx, next, p.ID, false); err != nil {
			t.Fatalf("no VSERPORT_CHANGE open=false for %s after the guest closed it: %v", p.ID, err)
		}
	})

	for i, tc := range []struct {
		port string
		n    int64
	}{
		{names[0], 1},
		{names[0], 64 << 10},
		{names[0], 8 << 20},
		{names[1], 64 << 10},
	} {
		t.Run(tc.port+"/"+strconv.FormatInt(tc.n, 10), func(t *testing.T) {
			conn := g.DialPort(t, tc.port)
			seed := uint64(i + 1)
			tr, err := SendToGuest(ctx, g, conn, devs[tc.port], tc.n, seed)
			if err != nil {
				t.Fatalf("host→guest: %v", err)
			}
			t.Logf("host→guest %d bytes ok, %.1f MB/s", tc.n, tr.MBps)
			tr, err = ReceiveFromGuest(ctx, g, conn, devs[tc.port], tc.n, seed+100)
			if err != nil {
				t.Fatalf("guest→host: %v", err)
			}
			t.Logf("guest→host %d bytes ok, %.1f MB/s", tc.n, tr.MBps)
		})
	}

	t.Run("hotplug", func(t *testing.T) {
		const name = "org.vserial.test.hot"
		p, err := g.HotplugPort(ctx, Port{Name: name, Nr: 3})
		if err != nil {
			t.Fatal(err)
		}
		dev := waitVport(ctx, t, g, name, true)
		conn := g.DialPort(t, name)
		if _, err := SendToGuest(ctx, g, conn, dev, 64<<10, 42); err != nil {
			t.Fatalf("host→guest on the hot-plugged port: %v", err)
		}
		if _, err := ReceiveFromGuest(ctx, g, conn, dev, 64<<10, 43); err != nil {
			t.Fatalf("guest→host on the hot-plugged port: %v", err)
		}
		conn.Close()
		if err := g.UnplugPort(ctx, p.Name); err != nil {
			t.Fatal(err)
		}
		waitVport(ctx, t, g, name, false)
	})

	// Last: hand the function over to uio_pci_generic the way vserial-agent
	// does (driver_override + drivers_probe), proving the guest has what the
	// agent needs: the module, sysfs binding, and a /dev/uioN node.
	t.Run("release-to-uio", func(t *testing.T) {
		addrs, err := ReleaseKernelDriver(ctx, g)
		if err != nil {
			t.Fatal(err)
		}
		if len(addrs) != 1 {
			t.Fatalf("released %v from virtio-pci, want the one virtio-serial function", addrs)
		}
		waitVport(ctx, t, g, names[0], false)
		g.MustRun(t, "modprobe", "uio_pci_generic")
		fn := "/sys/bus/pci/devices/" + addrs[0]
		g.MustRun(t, "write", fn+"/driver_override", "uio_pci_generic")
		g.MustRun(t, "write", "/sys/bus/pci/drivers_probe", addrs[0])
		uio := strings.Fields(g.MustRun(t, "ls", fn+"/uio"))
		if len(uio) != 1 {
			t.Fatalf("%s/uio lists %v, want one uio device", fn, uio)
		}
		if err := g.WaitPath(ctx, "/dev/"+uio[0], 10*time.Second); err != nil {
			t.Fatalf("devtmpfs did not create /dev/%s: %v", uio[0], err)
		}
	})
}
