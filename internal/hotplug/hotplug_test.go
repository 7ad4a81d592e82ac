package hotplug

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/vserial/vserial/pciscan"
)

// fakeEvents is a uevent source fed by the test.
type fakeEvents struct {
	c    chan pciscan.Uevent
	once sync.Once
	done chan struct{}
}

func newEvents() *fakeEvents {
	return &fakeEvents{c: make(chan pciscan.Uevent, 16), done: make(chan struct{})}
}

func (f *fakeEvents) Next() (pciscan.Uevent, error) {
	select {
	case e := <-f.c:
		return e, nil
	case <-f.done:
		return pciscan.Uevent{}, os.ErrClosed
	}
}

func (f *fakeEvents) Close() error { f.once.Do(func() { close(f.done) }); return nil }

// owner records decisions; it holds what it adopted.
type owner struct {
	mu       sync.Mutex
	held     map[string]bool
	explicit map[string]bool
	log      []string
	changed  chan struct{}
}

func newOwner() *owner {
	return &owner{held: map[string]bool{}, explicit: map[string]bool{}, changed: make(chan struct{}, 64)}
}

func (o *owner) Held(addr string) bool { o.mu.Lock(); defer o.mu.Unlock(); return o.held[addr] }

func (o *owner) Eligible(fn pciscan.Function) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return fn.Driver == "" || o.explicit[fn.Addr]
}

func (o *owner) Adopt(fn pciscan.Function) {
	o.mu.Lock()
	o.held[fn.Addr] = true
	o.log = append(o.log, "adopt "+fn.Addr)
	o.mu.Unlock()
	o.changed <- struct{}{}
}

func (o *owner) Release(addr, why string) {
	o.mu.Lock()
	delete(o.held, addr)
	o.log = append(o.log, "release "+addr+": "+why)
	o.mu.Unlock()
	o.changed <- struct{}{}
}

func (o *owner) Gone(addr string) {
	o.mu.Lock()
	o.log = append(o.log, "gone "+addr)
	o.mu.Unlock()
	o.changed <- struct{}{}
}

func (o *owner) decisions() []string { o.mu.Lock(); defer o.mu.Unlock(); return slices.Clone(o.log) }

// function writes a PCI function into a fake sysfs.
func function(t *testing.T, sysfs, addr string, device uint16, driver string) {
	t.Helper()
	dir := filepath.Join(sysfs, "bus", "pci", "devices", addr)
	os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	sub := "0x0003"
	for name, v := range map[string]string{"vendor": "0x1af4", "device": "0x" + hex4(device), "subsystem_vendor": "0x1af4",
		"subsystem_device": sub, "revision": "0x01", "class": "0x078000"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if driver != "" {
		drv := filepath.Join(sysfs, "bus", "pci", "drivers", driver)
		os.MkdirAll(drv, 0o755)
		if err := os.Symlink(drv, filepath.Join(dir, "driver")); err != nil {
			t.Fatal(err)
		}
	}
}

func hex4(v uint16) string {
	const d = "0123456789abcdef"
	return string([]byte{d[v>>12&15], d[v>>8&15], d[v>>4&15], d[v&15]})
}

func start(t *testing.T, sysfs string, o *owner) *fakeEvents {
	t.Helper()
	ev := newEvents()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, ev, Config{Sysfs: sysfs, Settle: 20 * time.Millisecond}, o) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return ev
}

func (o *owner) wait(t *testing.T, n int) []string {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for len(o.decisions()) < n {
		select {
		case <-o.changed:
		case <-deadline:
			t.Fatalf("decisions %q, waited for %d", o.decisions(), n)
		}
	}
	return o.decisions()
}

// A console function that appears free is adopted once it settled; one a
// kernel driver took meanwhile, or one that is not a console, is not; a
// removed one is released.
func TestAdoptAndRelease(t *testing.T) {
	sysfs := t.TempDir()
	o := newOwner()
	ev := start(t, sysfs, o)
	function(t, sysfs, "0000:01:00.0", pciscan.DeviceConsoleModern, "")
	function(t, sysfs, "0000:02:00.0", pciscan.DeviceConsoleModern, "virtio-pci")
	function(t, sysfs, "0000:03:00.0", 0x1041, "") // a virtio-net function
	for _, a := range []string{"0000:01:00.0", "0000:02:00.0", "0000:03:00.0"} {
		ev.c <- pciscan.Uevent{Action: "add", Addr: a}
	}
	o.wait(t, 1)
	time.Sleep(100 * time.Millisecond)
	if got := o.decisions(); !slices.Equal(got, []string{"adopt 0000:01:00.0"}) {
		t.Fatalf("decisions %q, want only the free console adopted", got)
	}
	ev.c <- pciscan.Uevent{Action: "remove", Addr: "0000:02:00.0"} // not ours: only gone
	ev.c <- pciscan.Uevent{Action: "unbind", Addr: "0000:01:00.0", Driver: "uio_pci_generic"}
	got := o.wait(t, 3)
	if got[1] != "gone 0000:02:00.0" || got[2] != "release 0000:01:00.0: function unbound from uio_pci_generic (unplugged, or taken by someone else)" {
		t.Fatalf("decisions %q", got)
	}
}

// An operator-named function is adopted from a kernel driver; a removal of
// a held function releases it before anything else; an add for a function
// whose directory is already gone does nothing.
func TestExplicitAndVanished(t *testing.T) {
	sysfs := t.TempDir()
	o := newOwner()
	o.explicit["0000:04:00.0"] = true
	ev := start(t, sysfs, o)
	function(t, sysfs, "0000:04:00.0", pciscan.DeviceConsoleLegacy, "virtio-pci")
	ev.c <- pciscan.Uevent{Action: "bind", Addr: "0000:04:00.0", Driver: "virtio-pci"}
	ev.c <- pciscan.Uevent{Action: "add", Addr: "0000:05:00.0"} // no such directory
	o.wait(t, 1)
	ev.c <- pciscan.Uevent{Action: "remove", Addr: "0000:04:00.0"}
	got := o.wait(t, 3)
	if !slices.Equal(got, []string{"adopt 0000:04:00.0", "release 0000:04:00.0: function removed", "gone 0000:04:00.0"}) {
		t.Fatalf("decisions %q", got)
	}
}

// After lost events every console function is looked at again.
func TestOverflowRescans(t *testing.T) {
	sysfs := t.TempDir()
	o := newOwner()
	ev := start(t, sysfs, o)
	function(t, sysfs, "0000:06:00.0", pciscan.DeviceConsoleModern, "")
	ev.c <- pciscan.Uevent{Action: pciscan.ActionOverflow}
	if got := o.wait(t, 1); got[0] != "adopt 0000:06:00.0" {
		t.Fatalf("decisions %q", got)
	}
}

// The source failing ends Run with its error.
func TestSourceErrorEndsRun(t *testing.T) {
	ev := &errEvents{}
	err := Run(context.Background(), ev, Config{Sysfs: t.TempDir()}, newOwner())
	if !errors.Is(err, errBroken) {
		t.Fatalf("Run: %v, want the source's error", err)
	}
}

var errBroken = errors.New("broken")

type errEvents struct{}

func (errEvents) Next() (pciscan.Uevent, error) { return pciscan.Uevent{}, errBroken }
func (errEvents) Close() error                  { return nil }
