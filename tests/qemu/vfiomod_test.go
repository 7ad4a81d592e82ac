package qemu

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const bookwormBanner = "Linux version 6.1.0-56-amd64 (debian-kernel@lists.debian.org) (gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0, " +
	"GNU ld (GNU Binutils for Debian) 2.40) #1 SMP PREEMPT_DYNAMIC Debian 6.1.192-2 (2026-11-16)"

func TestDebianBanner(t *testing.T) {
	img := []byte("\x7fELF...Linux version %s\x00junk\x00" + bookwormBanner + "\n\x00more")
	got, err := debianBanner(img, "6.1.0-56-amd64")
	if err != nil || got != bookwormBanner {
		t.Errorf("debianBanner = %q, %v; want the banner", got, err)
	}
	if _, err := debianBanner(img, "6.1.0-57-amd64"); err == nil {
		t.Error("found a banner for a release the image is not")
	}
	if _, err := debianBanner([]byte("Linux version 6.1.0-56-amd64 (unterminated"), "6.1.0-56-amd64"); err == nil {
		t.Error("accepted an unterminated banner")
	}
}

func TestDebianKernelVersion(t *testing.T) {
	for _, c := range []struct{ banner, version, source string }{
		{bookwormBanner, "6.1.192-2", "linux-source-6.1"},
		{"Linux version 6.12.12+bpo-amd64 (debian-kernel@lists.debian.org) (x86_64-linux-gnu-gcc-12 (Debian 12.2.0-14) 12.2.0) " +
			"#1 SMP PREEMPT_DYNAMIC Debian 6.12.12-1~bpo12+1 (2025-02-23)", "6.12.12-1~bpo12+1", "linux-source-6.12"},
	} {
		v, src, err := debianKernelVersion(c.banner)
		if err != nil || v != c.version || src != c.source {
			t.Errorf("debianKernelVersion(%q) = %q, %q, %v; want %q, %q", c.banner, v, src, err, c.version, c.source)
		}
	}
	for _, bad := range []string{
		"Linux version 6.1.0 (x) #1 SMP",                          // not Debian's
		"Linux version 6.1.0 #1 Debian x.y-1 (2026-11-16)",        // no MAJOR.MINOR
		"Linux version 6.1.0 #1 Debian 6-1 (2026-11-16)",          // no minor
		"Debian 6.1.1-1 (2026-11-16) Debian 6.1.2-1 (2026-11-16)", // ambiguous
	} {
		if v, src, err := debianKernelVersion(bad); err == nil {
			t.Errorf("debianKernelVersion(%q) = %q, %q; want an error", bad, v, src)
		}
	}
}

func TestAptDepends(t *testing.T) {
	out := "linux-headers-6.1.0-56-amd64\n  Depends: linux-headers-6.1.0-56-common\n  Depends: linux-kbuild-6.1\n" +
		"  Depends: linux-compiler-gcc-12-x86\n  Recommends: foo\n |Depends: <virtual>\n  Depends: linux-kbuild-6.1\n"
	got := aptDepends(out)
	want := []string{"linux-headers-6.1.0-56-common", "linux-kbuild-6.1", "linux-compiler-gcc-12-x86"}
	if !slices.Equal(got, want) {
		t.Errorf("aptDepends = %q, want %q", got, want)
	}
}

func TestKernelCompiler(t *testing.T) {
	cfg := "# comment\nCONFIG_CC_VERSION_TEXT=\"gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0\"\nCONFIG_GCC_VERSION=120200\n# CONFIG_MODULE_SIG_FORCE is not set\n"
	if cc, err := kernelCompiler(cfg); err != nil || cc != "gcc-12" {
		t.Errorf("kernelCompiler = %q, %v; want gcc-12", cc, err)
	}
	if v := kconfigValue(cfg, "MODULE_SIG_FORCE"); v != "" {
		t.Errorf("unset MODULE_SIG_FORCE reads %q", v)
	}
	if v := kconfigValue(cfg+"CONFIG_MODULE_SIG_FORCE=y\n", "MODULE_SIG_FORCE"); v != "y" {
		t.Errorf("MODULE_SIG_FORCE=y reads %q", v)
	}
	for _, bad := range []string{"", "CONFIG_CC_VERSION_TEXT=\"Debian clang version 16\"\n", "CONFIG_CC_VERSION_TEXT=\"gcc-x y\"\n"} {
		if cc, err := kernelCompiler(bad); err == nil {
			t.Errorf("kernelCompiler(%q) = %q; want an error", bad, cc)
		}
	}
}

func TestVfioObjects(t *testing.T) {
	// drivers/vfio/Makefile of 6.1 and (shortened) of 6.6.
	v61 := "# SPDX-License-Identifier: GPL-2.0\nvfio_virqfd-y := virqfd.o\n\nobj-$(CONFIG_VFIO) += vfio.o\n\n" +
		"vfio-y += vfio_main.o \\\n\t  iova_bitmap.o \\\n\t  container.o\n\nobj-$(CONFIG_VFIO_VIRQFD) += vfio_virqfd.o\nobj-$(CONFIG_VFIO_PCI) += pci/\n"
	got, err := vfioObjects(v61)
	if want := []string{"vfio-y += vfio_main.o iova_bitmap.o container.o"}; err != nil || !slices.Equal(got, want) {
		t.Errorf("6.1: vfioObjects = %q, %v; want %q", got, err, want)
	}
	v66 := "obj-$(CONFIG_VFIO) += vfio.o\n\nvfio-y += vfio_main.o \\\n\t  group.o\nvfio-$(CONFIG_IOMMUFD) += iommufd.o\nvfio-$(CONFIG_VFIO_CONTAINER) += container.o\n"
	got, err = vfioObjects(v66)
	if want := []string{"vfio-y += vfio_main.o group.o", "vfio-$(CONFIG_IOMMUFD) += iommufd.o", "vfio-$(CONFIG_VFIO_CONTAINER) += container.o"}; err != nil || !slices.Equal(got, want) {
		t.Errorf("6.6: vfioObjects = %q, %v; want %q", got, err, want)
	}
	if got, err := vfioObjects("obj-m += x.o\n"); err == nil {
		t.Errorf("a Makefile without vfio objects gave %q", got)
	}
}

func TestCompareExports(t *testing.T) {
	kernel, err := parseSymvers("0x553babdf\tvfio_assign_device_set\tdrivers/vfio/vfio\tEXPORT_SYMBOL_GPL\t\n" +
		"0x48ee7465\tvfio_device_set_open_count\tdrivers/vfio/vfio\tEXPORT_SYMBOL_GPL\t\n" +
		"0x12345678\tvfio_pci_core_init_dev\tdrivers/vfio/pci/vfio-pci-core\tEXPORT_SYMBOL_GPL\t\n")
	if err != nil {
		t.Fatal(err)
	}
	same, err := parseSymvers("0x48ee7465\tvfio_device_set_open_count\t/tmp/mod/vfio\tEXPORT_SYMBOL_GPL\t\n" +
		"0x553babdf\tvfio_assign_device_set\t/tmp/mod/vfio\tEXPORT_SYMBOL_GPL\t\n")
	if err != nil {
		t.Fatal(err)
	}
	if err := compareExports(kernel, same, "drivers/vfio/vfio"); err != nil {
		t.Errorf("matching exports: %v", err)
	}
	changed, _ := parseSymvers("0x48ee7465\tvfio_device_set_open_count\t/tmp/mod/vfio\tEXPORT_SYMBOL_GPL\t\n" +
		"0x00000001\tvfio_assign_device_set\t/tmp/mod/vfio\tEXPORT_SYMBOL_GPL\t\n")
	if err := compareExports(kernel, changed, "drivers/vfio/vfio"); err == nil || !strings.Contains(err.Error(), "vfio_assign_device_set has CRC 0x00000001") {
		t.Errorf("changed CRC: %v", err)
	}
	missing, _ := parseSymvers("0x553babdf\tvfio_assign_device_set\t/tmp/mod/vfio\tEXPORT_SYMBOL_GPL\t\n")
	if err := compareExports(kernel, missing, "drivers/vfio/vfio"); err == nil || !strings.Contains(err.Error(), "vfio_device_set_open_count is not exported") {
		t.Errorf("missing export: %v", err)
	}
	if err := compareExports(kernel, same, "drivers/vfio/other"); err == nil {
		t.Error("a module the kernel's symvers does not list compared equal")
	}
	for _, bad := range []string{"vfio_x\t0x1\tm\n", "0x1\n", "0x1\t\tm\n"} {
		if _, err := parseSymvers(bad); err == nil {
			t.Errorf("parseSymvers(%q) accepted it", bad)
		}
	}
}

func TestRelocateHeaders(t *testing.T) {
	dir := t.TempDir()
	mk := filepath.Join(dir, "Makefile")
	os.WriteFile(mk, []byte("include /usr/src/linux-headers-6.1.0-56-common/Makefile\noverride ARCH = x86\n"), 0o644)
	if err := relocateHeaders(dir, "/cache/root"); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(mk)
	if want := "include /cache/root/usr/src/linux-headers-6.1.0-56-common/Makefile\noverride ARCH = x86\n"; string(got) != want {
		t.Errorf("relocated Makefile:\n%s\nwant:\n%s", got, want)
	}
	os.WriteFile(mk, []byte("override ARCH = x86\n"), 0o644)
	if err := relocateHeaders(dir, "/cache/root"); err == nil {
		t.Error("a Makefile that includes nothing from /usr/src was accepted")
	}
}

func TestReplaceModule(t *testing.T) {
	files := []File{
		{Dst: "/lib/modules/6.1.0-56-amd64/modules.dep", Data: []byte("x")},
		{Dst: "/lib/modules/6.1.0-56-amd64/kernel/drivers/vfio/vfio.ko", Src: "/k/vfio.ko"},
		{Dst: "/lib/modules/6.1.0-56-amd64/kernel/drivers/vfio/pci/vfio-pci.ko", Src: "/k/vfio-pci.ko"},
	}
	if err := replaceModule(files, "kernel/drivers/vfio/vfio.ko", "/cache/vfio.ko"); err != nil {
		t.Fatal(err)
	}
	if files[1].Src != "/cache/vfio.ko" || files[2].Src != "/k/vfio-pci.ko" {
		t.Errorf("after replaceModule: %+v", files)
	}
	if err := replaceModule(files, "kernel/drivers/vfio/vfio_iommu_type1.ko", "/x"); err == nil {
		t.Error("replaced a module that is not there")
	}
}
