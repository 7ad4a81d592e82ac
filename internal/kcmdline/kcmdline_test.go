package kcmdline

import "testing"

func TestModuleParams(t *testing.T) {
	const cmdline = "console=ttyS0 vfio.enable_unsafe_noiommu_mode=1 panic=-1 vfio_pci.ids=1af4:1043 " +
		"vfio-pci.disable_idle_d3=1 vfio.x vfiox.y=2 vfio. vfio.=3 vfio.a/b=4 intel_iommu=on\n"
	for _, c := range []struct{ module, want string }{
		{"vfio", "enable_unsafe_noiommu_mode=1 x"}, // a bare name sets a boolean
		{"vfio-pci", "ids=1af4:1043 disable_idle_d3=1"},
		{"vfio_pci", "ids=1af4:1043 disable_idle_d3=1"}, // - and _ alike
		{"vfio_pci_core", ""},
		{"uio_pci_generic", ""},
		{"console", ""},
	} {
		if got := ModuleParams(cmdline, c.module); got != c.want {
			t.Errorf("ModuleParams(%s) = %q, want %q", c.module, got, c.want)
		}
	}
	if got := ModuleParams("a=b.c d.e=f", "a"); got != "" {
		t.Errorf("a=b.c gave module a the parameters %q", got)
	}
}
