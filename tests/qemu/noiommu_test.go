package qemu

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestNoIOMMUGuestBindsVFIO checks the no-IOMMU variant of the guest: the
// rebuilt vfio.ko loads with the mode on, and the device, which sits in no
// IOMMU group, binds to vfio-pci and gets /dev/vfio/noiommu-N.
func TestNoIOMMUGuestBindsVFIO(t *testing.T) {
	t.Parallel()
	g := Boot(t, Options{NoIOMMUVFIO: true, Ports: []Port{{Name: "org.vserial.noiommu"}}})
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	fn := findVirtioConsole(t, g)
	node := bindNoIOMMU(ctx, t, g, fn)
	t.Logf("%s bound to vfio-pci: %s", fn, node)
}

// bindNoIOMMU loads vfio-pci, binds the PCI function fn (a sysfs
// directory) to it and returns the /dev/vfio/noiommu-N node it gets,
// checking on the way that the rebuilt vfio.ko runs in no-IOMMU mode.
func bindNoIOMMU(ctx context.Context, t testing.TB, g *Guest, fn string) string {
	t.Helper()
	if _, err := g.Run(ctx, "readlink", fn+"/iommu_group"); err == nil {
		t.Fatalf("%s is in an IOMMU group already; the no-IOMMU guest has no IOMMU", fn)
	}
	g.MustRun(t, "modprobe", "vfio-pci")
	if mode := strings.TrimSpace(g.MustRun(t, "cat", "/sys/module/vfio/parameters/enable_unsafe_noiommu_mode")); mode != "Y" {
		t.Fatalf("vfio enable_unsafe_noiommu_mode = %q after modprobe, want Y (from %s on the command line)", mode, NoIOMMUParam)
	}
	addr := fn[strings.LastIndex(fn, "/")+1:]
	g.MustRun(t, "write", fn+"/driver_override", "vfio-pci")
	g.MustRun(t, "write", "/sys/bus/pci/drivers_probe", addr)
	if drv := g.MustRun(t, "readlink", fn+"/driver"); !strings.HasSuffix(strings.TrimSpace(drv), "/vfio-pci") {
		t.Fatalf("%s bound to %q, want vfio-pci", addr, drv)
	}
	group := strings.TrimSpace(g.MustRun(t, "readlink", fn+"/iommu_group"))
	if group == "" {
		t.Fatalf("%s has no IOMMU group after binding vfio-pci", fn)
	}
	name := strings.TrimSpace(g.MustRun(t, "cat", fn+"/iommu_group/name"))
	if name != "vfio-noiommu" {
		t.Errorf("%s's group is named %q, want vfio-noiommu", fn, name)
	}
	node := "/dev/vfio/noiommu-" + group[strings.LastIndex(group, "/")+1:]
	if err := g.WaitPath(ctx, node, 10*time.Second); err != nil {
		t.Fatalf("no %s: %v", node, err)
	}
	return node
}
