package pciscan

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fn describes one captured function for a fake sysfs tree.
type fn struct {
	addr                                 string
	vendor, device, subVendor, subDevice string
	revision, class                      string
	driver, iommuGroup                   string
}

// consoleModern and friends are as captured from QEMU 7.2 q35 guests.
var (
	consoleModern = fn{addr: "0000:01:00.0", vendor: "0x1af4", device: "0x1043", subVendor: "0x1af4",
		subDevice: "0x1100", revision: "0x01", class: "0x078000", driver: "virtio-pci"}
	consoleLegacy = fn{addr: "0000:00:03.0", vendor: "0x1af4", device: "0x1003", subVendor: "0x1af4",
		subDevice: "0x0003", revision: "0x00", class: "0x078000", driver: "virtio-pci", iommuGroup: "3"}
	hostBridge = fn{addr: "0000:00:00.0", vendor: "0x8086", device: "0x29c0", subVendor: "0x1af4",
		subDevice: "0x1100", revision: "0x02", class: "0x060000"}
)

// fakeSysfs builds a sysfs tree shaped like the kernel's: function
// directories under devices/, driver directories under bus/pci/drivers/, and
// driver/iommu_group symlinks. Files are written with a trailing newline as
// the kernel does.
func fakeSysfs(t *testing.T, fns ...fn) string {
	t.Helper()
	root := t.TempDir()
	pci := filepath.Join(root, "bus", "pci")
	mustMkdir(t, filepath.Join(pci, "devices"))
	mustMkdir(t, filepath.Join(root, "kernel", "iommu_groups"))
	mustWrite(t, filepath.Join(pci, "drivers_probe"), "")
	for _, d := range []string{"virtio-pci", "uio_pci_generic"} {
		addDriver(t, root, d)
	}
	for _, f := range fns {
		dir := filepath.Join(root, "devices", "pci0000:00", f.addr)
		mustMkdir(t, dir)
		for name, v := range map[string]string{"vendor": f.vendor, "device": f.device,
			"subsystem_vendor": f.subVendor, "subsystem_device": f.subDevice,
			"revision": f.revision, "class": f.class, "driver_override": "(null)"} {
			if v != "-" { // "-" leaves the file out
				mustWrite(t, filepath.Join(dir, name), v+"\n")
			}
		}
		if f.driver != "" {
			mustSymlink(t, filepath.Join("..", "..", "..", "bus", "pci", "drivers", f.driver), filepath.Join(dir, "driver"))
		}
		if f.iommuGroup != "" {
			g := filepath.Join(root, "kernel", "iommu_groups", f.iommuGroup)
			mustMkdir(t, g)
			mustSymlink(t, g, filepath.Join(dir, "iommu_group"))
		}
		mustSymlink(t, filepath.Join("..", "..", "..", "devices", "pci0000:00", f.addr), filepath.Join(pci, "devices", f.addr))
	}
	return root
}

func addDriver(t *testing.T, root, name string) {
	d := filepath.Join(root, "bus", "pci", "drivers", name)
	mustMkdir(t, d)
	mustWrite(t, filepath.Join(d, "bind"), "")
	mustWrite(t, filepath.Join(d, "unbind"), "")
}

func mustMkdir(t *testing.T, p string) {
	t.Helper()
	if err := os.MkdirAll(p, 0o755); err != nil {
		t.Fatal(err)
	}
}

func mustWrite(t *testing.T, p, s string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func mustSymlink(t *testing.T, target, p string) {
	t.Helper()
	if err := os.Symlink(target, p); err != nil {
		t.Fatal(err)
	}
}

func TestScanCaptured(t *testing.T) {
	root := fakeSysfs(t, consoleModern, hostBridge, consoleLegacy)
	got, err := Scan(root)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 {
		t.Fatalf("got %d functions, want 3: %v", len(got), got)
	}
	// Sorted by address.
	want := []Function{
		{Addr: "0000:00:00.0", Vendor: 0x8086, Device: 0x29c0, SubVendor: 0x1af4, SubDevice: 0x1100, Revision: 2, Class: 0x060000},
		{Addr: "0000:00:03.0", Vendor: 0x1af4, Device: 0x1003, SubVendor: 0x1af4, SubDevice: 3, Revision: 0, Class: 0x078000,
			Driver: "virtio-pci", IOMMUGroup: "3"},
		{Addr: "0000:01:00.0", Vendor: 0x1af4, Device: 0x1043, SubVendor: 0x1af4, SubDevice: 0x1100, Revision: 1, Class: 0x078000,
			Driver: "virtio-pci"},
	}
	for i := range want {
		want[i].Path = filepath.Join(root, "bus", "pci", "devices", want[i].Addr)
		if got[i] != want[i] {
			t.Errorf("function %d:\n got %+v\nwant %+v", i, got[i], want[i])
		}
	}
	if !IsConsole(got[1]) || !IsConsole(got[2]) || IsConsole(got[0]) {
		t.Errorf("IsConsole: bridge %v legacy %v modern %v", IsConsole(got[0]), IsConsole(got[1]), IsConsole(got[2]))
	}
}

func TestScanEmpty(t *testing.T) {
	got, err := Scan(fakeSysfs(t))
	if err != nil || len(got) != 0 {
		t.Fatalf("Scan(empty) = %v, %v", got, err)
	}
	if _, err := Scan(t.TempDir()); err == nil {
		t.Fatal("Scan of a tree without bus/pci/devices succeeded")
	}
}

func TestScanMalformed(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*fn)
		file string
	}{
		{"no 0x", func(f *fn) { f.vendor = "1af4" }, "vendor"},
		{"empty digits", func(f *fn) { f.device = "0x" }, "device"},
		{"too wide", func(f *fn) { f.subDevice = "0x10003" }, "subsystem_device"},
		{"not hex", func(f *fn) { f.subVendor = "0xzz" }, "subsystem_vendor"},
		{"revision wide", func(f *fn) { f.revision = "0x100" }, "revision"},
		{"class wide", func(f *fn) { f.class = "0x1078000" }, "class"},
		{"sign", func(f *fn) { f.vendor = "0x-1" }, "vendor"},
		{"two lines", func(f *fn) { f.vendor = "0x1af4\n0x1af4" }, "vendor"},
		{"spaces", func(f *fn) { f.device = " 0x1043" }, "device"},
		{"empty", func(f *fn) { f.class = "" }, "class"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := consoleModern
			tc.edit(&f)
			root := fakeSysfs(t, hostBridge, f)
			_, err := Scan(root)
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("Scan = %v, want ErrMalformed", err)
			}
			if !strings.Contains(err.Error(), filepath.Join(f.addr, tc.file)) {
				t.Errorf("error %q does not name the file %s", err, tc.file)
			}
		})
	}
}

func TestScanMissingFile(t *testing.T) {
	f := consoleModern
	f.revision = "-"
	_, err := Scan(fakeSysfs(t, f))
	if !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), "revision") {
		t.Fatalf("Scan = %v, want a not-exist error naming revision", err)
	}
}

func TestScanSkipsVanishedFunction(t *testing.T) {
	// A dangling devices/ link is what a hot-unplug in the middle of a scan
	// looks like.
	root := fakeSysfs(t, consoleModern, consoleLegacy)
	if err := os.RemoveAll(filepath.Join(root, "devices", "pci0000:00", consoleLegacy.addr)); err != nil {
		t.Fatal(err)
	}
	got, err := Scan(root)
	if err != nil || len(got) != 1 || got[0].Addr != consoleModern.addr {
		t.Fatalf("Scan = %v, %v; want only %s", got, err, consoleModern.addr)
	}
}

func TestScanRejectsStrangeEntry(t *testing.T) {
	root := fakeSysfs(t, consoleModern)
	mustMkdir(t, filepath.Join(root, "bus", "pci", "devices", "..hidden"))
	if _, err := Scan(root); !errors.Is(err, ErrMalformed) {
		t.Fatalf("Scan = %v, want ErrMalformed", err)
	}
}

func TestIsConsole(t *testing.T) {
	for _, tc := range []struct {
		f    Function
		want bool
	}{
		{Function{Vendor: 0x1af4, Device: 0x1043, SubDevice: 0x1100}, true},
		{Function{Vendor: 0x1af4, Device: 0x1003, SubDevice: 3}, true},
		{Function{Vendor: 0x1af4, Device: 0x1003, SubDevice: 0x1100}, false}, // not what spec requires of transitional
		{Function{Vendor: 0x1af4, Device: 0x1000, SubDevice: 3}, false},      // net
		{Function{Vendor: 0x1af4, Device: 0x1044, SubDevice: 3}, false},      // rng
		{Function{Vendor: 0x8086, Device: 0x1043}, false},
	} {
		if got := IsConsole(tc.f); got != tc.want {
			t.Errorf("IsConsole(%v) = %v, want %v", tc.f, got, tc.want)
		}
	}
}

func TestParseAddr(t *testing.T) {
	for in, want := range map[string]string{
		"0000:00:03.0":   "0000:00:03.0",
		"00:03.0":        "0000:00:03.0",
		" 0000:0A:1f.7 ": "0000:0a:1f.7",
		"10000:00:02.0":  "10000:00:02.0",
	} {
		got, err := ParseAddr(in)
		if err != nil || got != want {
			t.Errorf("ParseAddr(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "0000:00:03", "0000:00:03.8", "0000:00:20.0", "../../../etc",
		"0000:00:03.0/../..", "0000:00:03.0/", "0000/00:03.0", "xx:03.0", "0000:00:03.0\n0"} {
		if got, err := ParseAddr(in); !errors.Is(err, ErrBadAddr) {
			t.Errorf("ParseAddr(%q) = %q, %v; want ErrBadAddr", in, got, err)
		}
	}
}

func TestLookup(t *testing.T) {
	root := fakeSysfs(t, consoleModern)
	f, err := Lookup(root, "01:00.0")
	if err != nil || f.Device != 0x1043 || f.Driver != "virtio-pci" {
		t.Fatalf("Lookup = %+v, %v", f, err)
	}
	if _, err := Lookup(root, "0000:00:07.0"); !errors.Is(err, ErrNoDevice) {
		t.Fatalf("Lookup(absent) = %v, want ErrNoDevice", err)
	}
	if _, err := Lookup(root, "../../x"); !errors.Is(err, ErrBadAddr) {
		t.Fatalf("Lookup(traversal) = %v, want ErrBadAddr", err)
	}
}

func TestModuleAndDriver(t *testing.T) {
	root := fakeSysfs(t)
	mustMkdir(t, filepath.Join(root, "module", "uio_pci_generic"))
	if !ModuleLoaded(root, "uio_pci_generic") || !ModuleLoaded(root, "uio-pci-generic") {
		t.Error("ModuleLoaded(uio_pci_generic) = false")
	}
	if ModuleLoaded(root, "vfio_pci") || ModuleLoaded(root, "..") || ModuleLoaded(root, "../module/uio_pci_generic") {
		t.Error("ModuleLoaded reported an absent or invalid module")
	}
	if !DriverRegistered(root, "virtio-pci") || DriverRegistered(root, "vfio-pci") || DriverRegistered(root, "../drivers/virtio-pci") {
		t.Error("DriverRegistered wrong")
	}
}
