package pciscan

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
)

// kernel plays the kernel's part in a fake sysfs: it records every write
// Take makes, performs it on the file, and then moves the driver symlink as
// the PCI core would.
type kernel struct {
	t           *testing.T
	root        string
	defaultDrv  string // what a probe without override binds ("" = nothing)
	ignoreProbe bool   // drivers_probe does nothing (older kernels, or a racing udev)
	refuse      string // this driver's probe fails
	writes      []string
}

func (k *kernel) binder() binder { return binder{sysfs: k.root, write: k.write} }

func (k *kernel) write(path, value string) error {
	rel, err := filepath.Rel(k.root, path)
	if err != nil || strings.HasPrefix(rel, "..") {
		k.t.Fatalf("write outside sysfs: %s", path)
	}
	k.writes = append(k.writes, rel+"="+strings.TrimSpace(value))
	if err := sysfsWrite(path, value); err != nil {
		return err
	}
	dir, file := filepath.Split(rel)
	switch {
	case file == "unbind":
		drv := filepath.Base(dir)
		if k.driverOf(value) != drv {
			return syscall.ENODEV
		}
		return os.Remove(filepath.Join(k.devDir(value), "driver"))
	case rel == filepath.Join("bus", "pci", "drivers_probe"):
		if k.ignoreProbe || k.driverOf(value) != "" {
			return nil
		}
		drv := k.override(value)
		if drv == "" {
			drv = k.defaultDrv
		}
		if drv == "" || drv == k.refuse {
			return nil // the kernel reports no error when nothing matches
		}
		return k.attach(value, drv)
	case file == "bind":
		drv := filepath.Base(dir)
		if o := k.override(value); (o != "" && o != drv) || drv == k.refuse {
			return syscall.ENODEV
		}
		if k.driverOf(value) != "" {
			return syscall.EBUSY
		}
		return k.attach(value, drv)
	}
	return nil
}

func (k *kernel) devDir(addr string) string {
	return filepath.Join(k.root, "bus", "pci", "devices", addr)
}

func (k *kernel) driverOf(addr string) string {
	d, err := linkBase(k.devDir(addr), "driver")
	if err != nil {
		k.t.Fatal(err)
	}
	return d
}

func (k *kernel) override(addr string) string {
	b, err := os.ReadFile(filepath.Join(k.devDir(addr), "driver_override"))
	if err != nil {
		k.t.Fatal(err)
	}
	s := strings.TrimSpace(string(b))
	if s == "(null)" {
		return ""
	}
	return s
}

func (k *kernel) attach(addr, drv string) error {
	return os.Symlink(filepath.Join("..", "..", "..", "bus", "pci", "drivers", drv), filepath.Join(k.devDir(addr), "driver"))
}

func newKernel(t *testing.T, fns ...fn) *kernel {
	return &kernel{t: t, root: fakeSysfs(t, fns...), defaultDrv: "virtio-pci"}
}

func TestBindRefusesHeldFunction(t *testing.T) {
	k := newKernel(t, consoleLegacy)
	_, err := k.binder().take("0000:00:03.0", "uio_pci_generic", false)
	if !errors.Is(err, ErrHeld) {
		t.Fatalf("take without force = %v, want ErrHeld", err)
	}
	if want := "pciscan: bind 0000:00:03.0: held by virtio-pci; name it with --device to take it"; err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
	var he *HeldError
	if !errors.As(err, &he) || he.Driver != "virtio-pci" {
		t.Errorf("errors.As HeldError = %+v", he)
	}
	if len(k.writes) != 0 {
		t.Errorf("refused bind still wrote %v", k.writes)
	}
}

func TestTakeAndRestore(t *testing.T) {
	k := newKernel(t, consoleLegacy)
	prev, err := k.binder().take("00:03.0", "uio_pci_generic", true)
	if err != nil {
		t.Fatal(err)
	}
	if prev != "virtio-pci" {
		t.Errorf("previous = %q, want virtio-pci", prev)
	}
	wantWrites := []string{
		"bus/pci/devices/0000:00:03.0/driver_override=uio_pci_generic",
		"bus/pci/drivers/virtio-pci/unbind=0000:00:03.0",
		"bus/pci/drivers_probe=0000:00:03.0",
	}
	if !reflect.DeepEqual(k.writes, wantWrites) {
		t.Errorf("writes:\n got %q\nwant %q", k.writes, wantWrites)
	}
	if d := k.driverOf("0000:00:03.0"); d != "uio_pci_generic" {
		t.Fatalf("driver after take = %q", d)
	}

	k.writes = nil
	if err := k.binder().restore("0000:00:03.0", prev); err != nil {
		t.Fatal(err)
	}
	wantWrites = []string{
		"bus/pci/devices/0000:00:03.0/driver_override=",
		"bus/pci/drivers/uio_pci_generic/unbind=0000:00:03.0",
		"bus/pci/drivers_probe=0000:00:03.0",
	}
	if !reflect.DeepEqual(k.writes, wantWrites) {
		t.Errorf("restore writes:\n got %q\nwant %q", k.writes, wantWrites)
	}
	if d := k.driverOf("0000:00:03.0"); d != "virtio-pci" {
		t.Fatalf("driver after restore = %q", d)
	}
}

func TestBindUnboundFunction(t *testing.T) {
	f := consoleModern
	f.driver = ""
	k := newKernel(t, f)
	prev, err := k.binder().take(f.addr, "uio_pci_generic", false)
	if err != nil || prev != "" {
		t.Fatalf("take = %q, %v; want \"\", nil", prev, err)
	}
	for _, w := range k.writes {
		if strings.Contains(w, "unbind") {
			t.Errorf("unbound function was unbound: %v", k.writes)
		}
	}
	if d := k.driverOf(f.addr); d != "uio_pci_generic" {
		t.Fatalf("driver = %q", d)
	}
	// Restoring "no driver" leaves it unbound.
	if err := k.binder().restore(f.addr, ""); err != nil {
		t.Fatal(err)
	}
	if d := k.driverOf(f.addr); d != "" {
		t.Fatalf("driver after restore to none = %q", d)
	}
}

func TestBindAlreadyBound(t *testing.T) {
	f := consoleModern
	f.driver = "uio_pci_generic"
	k := newKernel(t, f)
	prev, err := k.binder().take(f.addr, "uio_pci_generic", false)
	if err != nil || prev != "uio_pci_generic" {
		t.Fatalf("take = %q, %v", prev, err)
	}
	if len(k.writes) != 0 {
		t.Errorf("writes for an already bound function: %v", k.writes)
	}
}

func TestBindFallsBackToBindFile(t *testing.T) {
	k := newKernel(t, consoleLegacy)
	k.ignoreProbe = true
	if _, err := k.binder().take(consoleLegacy.addr, "uio_pci_generic", true); err != nil {
		t.Fatal(err)
	}
	if last := k.writes[len(k.writes)-1]; last != "bus/pci/drivers/uio_pci_generic/bind=0000:00:03.0" {
		t.Errorf("last write %q, want the bind file", last)
	}
	if d := k.driverOf(consoleLegacy.addr); d != "uio_pci_generic" {
		t.Fatalf("driver = %q", d)
	}
}

func TestBindFailureRestoresPrevious(t *testing.T) {
	k := newKernel(t, consoleLegacy)
	k.refuse = "uio_pci_generic"
	_, err := k.binder().take(consoleLegacy.addr, "uio_pci_generic", true)
	if err == nil || !strings.Contains(err.Error(), "did not take the function") {
		t.Fatalf("take = %v, want a verification failure", err)
	}
	if d := k.driverOf(consoleLegacy.addr); d != "virtio-pci" {
		t.Errorf("after a failed take the function is on %q, want virtio-pci back", d)
	}
	if o := k.override(consoleLegacy.addr); o != "" {
		t.Errorf("driver_override left at %q", o)
	}
}

func TestBindErrors(t *testing.T) {
	k := newKernel(t, consoleLegacy)
	b := k.binder()
	for _, tc := range []struct {
		addr, drv string
		want      error
	}{
		{"0000:00:03.0/../../../..", "uio_pci_generic", ErrBadAddr},
		{"0000:00:09.0", "uio_pci_generic", ErrNoDevice},
		{"0000:00:03.0", "vfio-pci", ErrNoDriver},
	} {
		if _, err := b.take(tc.addr, tc.drv, true); !errors.Is(err, tc.want) {
			t.Errorf("take(%q, %q) = %v, want %v", tc.addr, tc.drv, err, tc.want)
		}
	}
	if _, err := b.take("0000:00:03.0", "../x", true); err == nil {
		t.Error("take with a path as driver name succeeded")
	}
	if len(k.writes) != 0 {
		t.Errorf("failed validations wrote %v", k.writes)
	}
}

func TestBindRealWriterOnPlainFiles(t *testing.T) {
	// The exported functions use the real writer; on a plain tree nothing
	// moves the symlink, so verification must fail, and the files must show
	// what was written.
	root := fakeSysfs(t, consoleLegacy)
	_, err := Take(root, consoleLegacy.addr, "uio_pci_generic", true)
	if err == nil {
		t.Fatal("Take succeeded although nothing bound the function")
	}
	b, err := os.ReadFile(filepath.Join(root, "bus", "pci", "drivers", "virtio-pci", "unbind"))
	if err != nil || string(b) != "0000:00:03.0" {
		t.Errorf("unbind file = %q, %v", b, err)
	}
	if _, err := Take(root, consoleLegacy.addr, "uio_pci_generic", false); !errors.Is(err, ErrHeld) {
		t.Errorf("Take without force = %v, want ErrHeld", err)
	}
	if err := sysfsWrite(filepath.Join(root, "no-such-attribute"), "1"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("sysfsWrite created a file: %v", err)
	}
}
