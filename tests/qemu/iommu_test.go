package qemu

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestIOMMUGuestBindsVFIO checks the IOMMU variant of the guest that the
// VFIO mode runs in: the device sits in an IOMMU group, binds to vfio-pci,
// and the group's /dev/vfio node appears.
func TestIOMMUGuestBindsVFIO(t *testing.T) {
	t.Parallel() // guests boot in parallel; each has its own sockets
	g := Boot(t, Options{IOMMU: true, Ports: []Port{{Name: "org.vserial.iommu"}}, Modules: []string{"vfio-pci"}})
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	fn := findVirtioConsole(t, g)
	group := strings.TrimSpace(g.MustRun(t, "readlink", fn+"/iommu_group"))
	if group == "" {
		t.Fatalf("%s has no IOMMU group", fn)
	}
	g.MustRun(t, "modprobe", "vfio-pci")
	addr := fn[strings.LastIndex(fn, "/")+1:]
	g.MustRun(t, "write", fn+"/driver_override", "vfio-pci")
	g.MustRun(t, "write", "/sys/bus/pci/drivers_probe", addr)
	if drv := g.MustRun(t, "readlink", fn+"/driver"); !strings.HasSuffix(strings.TrimSpace(drv), "/vfio-pci") {
		t.Fatalf("%s bound to %q, want vfio-pci", addr, drv)
	}
	node := "/dev/vfio/" + group[strings.LastIndex(group, "/")+1:]
	if err := g.WaitPath(ctx, node, 10*time.Second); err != nil {
		t.Fatalf("no %s: %v", node, err)
	}
}

// findVirtioConsole returns the sysfs directory of the guest's
// virtio-console PCI function (vendor 0x1af4, device 0x1003 or 0x1043).
func findVirtioConsole(t testing.TB, g *Guest) string {
	t.Helper()
	const bus = "/sys/bus/pci/devices"
	for _, addr := range strings.Fields(g.MustRun(t, "ls", bus)) {
		dir := bus + "/" + addr
		ids := strings.Fields(g.MustRun(t, "cat", dir+"/vendor", dir+"/device"))
		if len(ids) == 2 && ids[0] == "0x1af4" && (ids[1] == "0x1003" || ids[1] == "0x1043") {
			return dir
		}
	}
	t.Fatal("no virtio-console PCI function in the guest")
	return ""
}
