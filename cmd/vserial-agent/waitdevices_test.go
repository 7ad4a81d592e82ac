package main

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vserial/vserial/agent/agenttest"
	"github.com/vserial/vserial/internal/hotplug"
	"github.com/vserial/vserial/pciscan"
)

// fakeUevents stands in for the kernel's uevent socket.
type fakeUevents struct {
	c    chan pciscan.Uevent
	once sync.Once
	done chan struct{}
}

func (f *fakeUevents) Next() (pciscan.Uevent, error) {
	select {
	case e := <-f.c:
		return e, nil
	case <-f.done:
		return pciscan.Uevent{}, os.ErrClosed
	}
}

func (f *fakeUevents) Close() error { f.once.Do(func() { close(f.done) }); return nil }

// With --wait-devices, run starts with no function, adopts the one that
// appears (a free virtio-console function), publishes its ports, lets go
// of it when it is removed — its socket goes, the device is closed, the
// agent keeps running — and adopts a new one at the same address after.
// A function a kernel driver took is left alone.
func TestRunWaitDevicesAdoptsAndLetsGo(t *testing.T) {
	ev := &fakeUevents{c: make(chan pciscan.Uevent, 8), done: make(chan struct{})}
	old := newUevents
	newUevents = func() (hotplug.Uevents, error) { return ev, nil }
	t.Cleanup(func() { newUevents = old })

	sys := shortTempDir(t)
	// Sysfs needs the devices directory even when it holds nothing.
	if err := os.MkdirAll(filepath.Join(sys, "bus", "pci", "devices"), 0o755); err != nil {
		t.Fatal(err)
	}
	h := startRun(t, sys, []string{"--wait-devices"}, nil)
	waitFile(t, filepath.Join(h.dir, ".control"))
	waitLog(t, h, "waiting for virtio-console functions to appear")

	fakeFunction(t, sys, "0000:00:08.0", "0x1af4", "0x1043", "0x1100", "virtio-pci") // held by a kernel driver
	fakeFunction(t, sys, "0000:01:00.0", "0x1af4", "0x1043", "0x1100", "")
	ev.c <- pciscan.Uevent{Action: "add", Addr: "0000:00:08.0"}
	ev.c <- pciscan.Uevent{Action: "add", Addr: "0000:01:00.0"}
	d := h.device(0)
	p := agenttest.NewPort(1, "org.example.hot")
	d.ports <- p
	sock := filepath.Join(h.dir, "org.example.hot")
	waitFile(t, sock)
	h.mu.Lock()
	if len(h.specs) != 1 || h.specs[0].Function.Addr != "0000:01:00.0" || h.specs[0].Index != 0 {
		t.Errorf("opened %+v, want only the free function as device 0", h.specs)
	}
	h.mu.Unlock()

	ev.c <- pciscan.Uevent{Action: "remove", Addr: "0000:01:00.0"}
	waitLog(t, h, "letting go of the function")
	deadline := time.Now().Add(patience)
	for {
		d.mu.Lock()
		closed := d.closed
		d.mu.Unlock()
		if closed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the removed function's device was never closed")
		}
		time.Sleep(2 * time.Millisecond)
	}
	// A closed driver device removes its ports (the fake leaves that to
	// the test); the socket then goes.
	p.Remove()
	for {
		if _, err := os.Lstat(sock); os.IsNotExist(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the removed function's socket is still there")
		}
		time.Sleep(2 * time.Millisecond)
	}
	select {
	case code := <-h.done:
		t.Fatalf("run exited (%d) with no device left under --wait-devices", code)
	case <-time.After(50 * time.Millisecond):
	}

	// Plugged again at the same address: a new device, index 1.
	ev.c <- pciscan.Uevent{Action: "add", Addr: "0000:01:00.0"}
	h.device(1)
	h.mu.Lock()
	if n := len(h.specs); n != 2 || h.specs[1].Index != 1 {
		t.Errorf("after the second plug: %d opens, %+v", n, h.specs)
	}
	h.mu.Unlock()
	h.cancel()
	if code := h.wait(); code != exitOK {
		t.Fatalf("exit %d", code)
	}
	if !strings.Contains(h.logs.String(), `event=device_removed`) && !strings.Contains(h.logs.String(), "device let go") {
		t.Errorf("no trace of the device let go in the log")
	}
}

// waitLog waits for a log line containing s.
func waitLog(t *testing.T, h *runHarness, s string) {
	t.Helper()
	deadline := time.Now().Add(patience)
	for !strings.Contains(h.logs.String(), s) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q in the log:\n%s", s, h.logs.String())
		}
		time.Sleep(2 * time.Millisecond)
	}
}
