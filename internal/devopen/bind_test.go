package devopen

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vserial/vserial/pciscan"
	"github.com/vserial/vserial/pciscan/pciscantest"
)

// inGroup puts the fake function at addr into IOMMU group group, as the
// kernel lays it out: an iommu_group link from the device and a link back
// under kernel/iommu_groups/GROUP/devices. name, if set, is the group's
// name attribute (vfio's no-IOMMU groups have one).
func inGroup(t *testing.T, root, addr, group, name string) {
	t.Helper()
	gdir := filepath.Join(root, "kernel", "iommu_groups", group)
	if err := os.MkdirAll(filepath.Join(gdir, "devices"), 0o755); err != nil {
		t.Fatal(err)
	}
	if name != "" {
		if err := os.WriteFile(filepath.Join(gdir, "name"), []byte(name+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	dev := filepath.Join(root, "bus", "pci", "devices", addr)
	if err := os.Symlink(gdir, filepath.Join(dev, "iommu_group")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(dev, filepath.Join(gdir, "devices", addr)); err != nil {
		t.Fatal(err)
	}
}

func registerDriver(t *testing.T, root, drv string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(root, "bus", "pci", "drivers", drv), 0o755); err != nil {
		t.Fatal(err)
	}
}

func writeFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

func lookup(t *testing.T, root, addr string) pciscan.Function {
	t.Helper()
	f, err := pciscan.Lookup(root, addr)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

const (
	depWithVFIO = "kernel/drivers/vfio/pci/vfio-pci.ko.xz: kernel/drivers/vfio/pci/vfio-pci-core.ko.xz kernel/drivers/vfio/vfio.ko.xz\n" +
		"kernel/drivers/uio/uio_pci_generic.ko.xz: kernel/drivers/uio/uio.ko.xz\n"
	depWithoutVFIO = "kernel/drivers/uio/uio_pci_generic.ko.xz: kernel/drivers/uio/uio.ko.xz\n" +
		"kernel/drivers/vfio/pci/vfio-pci-core.ko.xz: kernel/drivers/vfio/vfio.ko.xz\n" // not vfio-pci itself
)

func TestChooseBind(t *testing.T) {
	const addr = "0000:00:03.0"
	for _, c := range []struct {
		name        string
		group       string // "" none
		groupName   string
		registered  bool   // vfio-pci in bus/pci/drivers
		dep         string // modules.dep; "" no module directory
		builtin     string // modules.builtin
		bind        string
		reasonParts []string
	}{
		{name: "no group", dep: depWithVFIO, bind: BindUIO, reasonParts: []string{"no IOMMU group"}},
		{name: "group, module loadable", group: "5", dep: depWithVFIO, bind: BindVFIO, reasonParts: []string{"IOMMU group 5"}},
		{name: "group, driver registered", group: "5", registered: true, bind: BindVFIO, reasonParts: []string{"IOMMU group 5"}},
		{name: "group, built in", group: "12", builtin: "kernel/drivers/vfio/pci/vfio-pci.ko\n", dep: depWithoutVFIO, bind: BindVFIO, reasonParts: []string{"IOMMU group 12"}},
		{name: "group, no vfio-pci", group: "5", dep: depWithoutVFIO, bind: BindUIO, reasonParts: []string{"IOMMU group 5", "vfio-pci is neither registered nor loadable"}},
		{name: "group, no module dir", group: "5", bind: BindUIO, reasonParts: []string{"neither registered nor loadable"}},
		{name: "no-IOMMU group", group: "0", groupName: "vfio-noiommu", registered: true, bind: BindUIO, reasonParts: []string{"IOMMU group 0 is vfio no-IOMMU"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			pciscantest.Function(t, root, addr, "0x1af4", "0x1043", "0x1100", "")
			if c.group != "" {
				inGroup(t, root, addr, c.group, c.groupName)
			}
			if c.registered {
				registerDriver(t, root, "vfio-pci")
			}
			env := Env{Sysfs: root}
			if c.dep != "" || c.builtin != "" {
				env.Modules = filepath.Join(root, "lib", "modules", "6.1.0-test")
				writeFile(t, filepath.Join(env.Modules, "modules.dep"), c.dep)
				writeFile(t, filepath.Join(env.Modules, "modules.builtin"), c.builtin)
			}
			got := Choose(env, lookup(t, root, addr))
			if got.Bind != c.bind {
				t.Errorf("Choose = %s, want %s", got, c.bind)
			}
			for _, p := range c.reasonParts {
				if !strings.Contains(got.Reason, p) {
					t.Errorf("reason %q lacks %q", got.Reason, p)
				}
			}
		})
	}
}

func TestModuleAvailableNames(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "modules.dep"), "kernel/drivers/vfio/vfio_iommu_type1.ko.zst: kernel/drivers/vfio/vfio.ko.zst\n"+
		"kernel/drivers/uio/uio_pci_generic.ko:\n")
	for name, want := range map[string]bool{
		"vfio_iommu_type1": true, "vfio-iommu-type1": true, "uio_pci_generic": true,
		"vfio": false, // listed only as a dependency
		"uio":  false,
	} {
		if got := moduleAvailable(dir, name); got != want {
			t.Errorf("moduleAvailable(%q) = %v, want %v", name, got, want)
		}
	}
	if moduleAvailable("", "uio_pci_generic") || moduleAvailable(filepath.Join(dir, "missing"), "uio_pci_generic") {
		t.Error("a module counted as available without a module directory")
	}
}

func TestCheckVFIO(t *testing.T) {
	const addr, other = "0000:00:03.0", "0000:00:04.0"
	t.Run("type1 alone", func(t *testing.T) {
		root := t.TempDir()
		pciscantest.Function(t, root, addr, "0x1af4", "0x1043", "0x1100", "")
		inGroup(t, root, addr, "5", "")
		m, err := checkVFIO(root, lookup(t, root, addr))
		if err != nil || m.NoIOMMU || m.Group != "5" {
			t.Errorf("checkVFIO = %+v, %v; want type1 in group 5", m, err)
		}
	})
	t.Run("type1 group shared with a bound device", func(t *testing.T) {
		root := t.TempDir()
		pciscantest.Function(t, root, addr, "0x1af4", "0x1043", "0x1100", "")
		pciscantest.Function(t, root, other, "0x8086", "0x10d3", "0x0000", "e1000e")
		inGroup(t, root, addr, "5", "")
		if err := os.Symlink(filepath.Join(root, "bus", "pci", "devices", other), filepath.Join(root, "kernel", "iommu_groups", "5", "devices", other)); err != nil {
			t.Fatal(err)
		}
		_, err := checkVFIO(root, lookup(t, root, addr))
		if err == nil || !strings.Contains(err.Error(), other+" (bound to e1000e)") || !strings.Contains(err.Error(), "--bind uio") {
			t.Errorf("checkVFIO = %v; want the group refused naming %s and its driver", err, other)
		}
	})
	t.Run("no group, no-IOMMU mode on", func(t *testing.T) {
		root := t.TempDir()
		pciscantest.Function(t, root, addr, "0x1af4", "0x1003", "0x0003", "")
		writeFile(t, filepath.Join(root, "module", "vfio", "parameters", "enable_unsafe_noiommu_mode"), "Y\n")
		m, err := checkVFIO(root, lookup(t, root, addr))
		if err != nil || !m.NoIOMMU {
			t.Errorf("checkVFIO = %+v, %v; want no-IOMMU", m, err)
		}
	})
	t.Run("no group, no-IOMMU mode off", func(t *testing.T) {
		root := t.TempDir()
		pciscantest.Function(t, root, addr, "0x1af4", "0x1003", "0x0003", "")
		writeFile(t, filepath.Join(root, "module", "vfio", "parameters", "enable_unsafe_noiommu_mode"), "N\n")
		_, err := checkVFIO(root, lookup(t, root, addr))
		if !errors.Is(err, errNoIOMMUUnavailable) || !strings.Contains(err.Error(), "intel_iommu=on") || !strings.Contains(err.Error(), "enable_unsafe_noiommu_mode=1") {
			t.Errorf("checkVFIO = %v; want errNoIOMMUUnavailable naming both fixes", err)
		}
	})
	t.Run("no group, kernel without no-IOMMU", func(t *testing.T) {
		root := t.TempDir()
		pciscantest.Function(t, root, addr, "0x1af4", "0x1003", "0x0003", "")
		_, err := checkVFIO(root, lookup(t, root, addr))
		if !errors.Is(err, errNoIOMMUUnavailable) || !strings.Contains(err.Error(), "CONFIG_VFIO_NOIOMMU") {
			t.Errorf("checkVFIO = %v; want errNoIOMMUUnavailable naming CONFIG_VFIO_NOIOMMU", err)
		}
	})
	t.Run("already in a no-IOMMU group", func(t *testing.T) {
		root := t.TempDir()
		pciscantest.Function(t, root, addr, "0x1af4", "0x1003", "0x0003", "vfio-pci")
		inGroup(t, root, addr, "0", "vfio-noiommu")
		m, err := checkVFIO(root, lookup(t, root, addr))
		if err != nil || !m.NoIOMMU {
			t.Errorf("checkVFIO = %+v, %v; want no-IOMMU", m, err)
		}
	})
}
