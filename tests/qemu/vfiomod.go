package qemu

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
)

// Debian kernels build vfio.ko without CONFIG_VFIO_NOIOMMU, so
// /dev/vfio/noiommu-N never appears in their guests. For the no-IOMMU guest
// tests the harness rebuilds that one module, out of tree, from the
// linux-source package of exactly the guest kernel's Debian version against
// the matching linux-headers packages, with the kernel's own compiler and
// CONFIG_VFIO_NOIOMMU=y. The packages are downloaded and unpacked in the
// cache, never installed; only the stripped vfio.ko is kept.
//
// Nothing else changes: the option only compiles in vfio's no-IOMMU
// container code, so every symbol vfio exports keeps its modversions CRC,
// which EnsureNoIOMMUVFIO checks against the kernel's Module.symvers before
// it caches the module (vfio_pci_core and vfio_iommu_type1 are Debian's own
// and load on top of it). Debian does not enforce module signatures
// (CONFIG_MODULE_SIG_FORCE is off), so the unsigned module loads and only
// taints the kernel; the build refuses a kernel that enforces them.

// noIOMMURecipe changes whenever the way the module is built changes, so
// that cached modules built the old way are rebuilt.
const noIOMMURecipe = "1"

// NoIOMMUParam is the kernel command-line parameter that turns the mode
// on when the guest loads vfio (the guest helper's modprobe passes
// "vfio.*" parameters from /proc/cmdline, as kmod's does).
const NoIOMMUParam = "vfio.enable_unsafe_noiommu_mode=1"

// debianBanner finds the kernel's version banner (what /proc/version
// shows) in the uncompressed kernel image, for the kernel release version.
func debianBanner(vmlinux []byte, release string) (string, error) {
	prefix := []byte("Linux version " + release + " ")
	i := bytes.Index(vmlinux, prefix)
	if i < 0 {
		return "", fmt.Errorf("no %q banner in the kernel image", prefix)
	}
	end := bytes.IndexAny(vmlinux[i:], "\x00\n")
	if end < 0 || end > 1024 {
		return "", errors.New("kernel banner is not terminated")
	}
	return string(vmlinux[i : i+end]), nil
}

var debianVersionRe = regexp.MustCompile(`\bDebian ([0-9][0-9A-Za-z.+~:-]*) \([0-9]{4}-[0-9]{2}-[0-9]{2}\)`)

// debianKernelVersion returns the Debian package version in a kernel
// banner ("... #1 SMP PREEMPT_DYNAMIC Debian 6.1.192-2 (2026-11-16)") and
// the name of the linux-source package of that version ("linux-source-6.1").
func debianKernelVersion(banner string) (version, sourcePkg string, err error) {
	m := debianVersionRe.FindAllStringSubmatch(banner, -1)
	if len(m) != 1 {
		return "", "", fmt.Errorf("kernel banner %q: want one \"Debian VERSION (DATE)\", found %d", banner, len(m))
	}
	version = m[0][1]
	upstream, _, _ := strings.Cut(version, "-")
	parts := strings.SplitN(upstream, ".", 3)
	if len(parts) < 2 || parts[0] == "" || parts[1] == "" || strings.Trim(parts[0]+parts[1], "0123456789") != "" {
		return "", "", fmt.Errorf("the Debian kernel version %q has no MAJOR.MINOR", version)
	}
	return version, "linux-source-" + parts[0] + "." + parts[1], nil
}

// aptDepends parses `apt-cache depends PKG` output: the packages PKG
// depends on, in order (alternatives and other relations left out).
func aptDepends(out string) []string {
	var deps []string
	for line := range strings.Lines(out) {
		if dep, ok := strings.CutPrefix(strings.TrimSpace(line), "Depends:"); ok {
			dep = strings.Trim(strings.TrimSpace(dep), "<>")
			if dep != "" && !slices.Contains(deps, dep) {
				deps = append(deps, dep)
			}
		}
	}
	return deps
}

// kconfigValue returns the value of CONFIG_name in a .config ("" when it
// is not set), with the quotes of a string value removed.
func kconfigValue(config, name string) string {
	for line := range strings.Lines(config) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "CONFIG_"+name+"="); ok {
			return strings.Trim(v, `"`)
		}
	}
	return ""
}

// kernelCompiler returns the compiler program the kernel was built with,
// from CONFIG_CC_VERSION_TEXT ("gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0").
func kernelCompiler(config string) (string, error) {
	text := kconfigValue(config, "CC_VERSION_TEXT")
	prog, _, _ := strings.Cut(text, " ")
	if !regexp.MustCompile(`^([a-z0-9_]+-linux-gnu-)?gcc(-[0-9]+)?$`).MatchString(prog) {
		return "", fmt.Errorf("kernel config: CONFIG_CC_VERSION_TEXT=%q does not name gcc", text)
	}
	return prog, nil
}

// vfioObjects returns the Kbuild lines of drivers/vfio/Makefile that make
// up vfio.ko ("vfio-y += ...", "vfio-$(CONFIG_X) += ...", continuation
// lines joined), for a Kbuild file that builds only that module.
func vfioObjects(makefile string) ([]string, error) {
	var lines []string
	var cur strings.Builder
	for line := range strings.Lines(makefile) {
		line = strings.TrimRight(line, "\r\n")
		if cont, ok := strings.CutSuffix(line, `\`); ok {
			cur.WriteString(cont + " ")
			continue
		}
		cur.WriteString(line)
		full := strings.Join(strings.Fields(cur.String()), " ")
		cur.Reset()
		if strings.HasPrefix(full, "vfio-y ") || strings.HasPrefix(full, "vfio-$(CONFIG_") {
			lines = append(lines, full)
		}
	}
	if len(lines) == 0 {
		return nil, errors.New("drivers/vfio/Makefile: no vfio-y objects")
	}
	return lines, nil
}

// symvers maps each symbol in a Module.symvers to its CRC and module.
type symvers map[string]struct{ crc, module string }

func parseSymvers(data string) (symvers, error) {
	s := symvers{}
	for n, line := range strings.Split(strings.TrimRight(data, "\n"), "\n") {
		if line == "" {
			continue
		}
		f := strings.Split(line, "\t")
		if len(f) < 3 || !strings.HasPrefix(f[0], "0x") || f[1] == "" {
			return nil, fmt.Errorf("module.symvers line %d: %q is not CRC<TAB>SYMBOL<TAB>MODULE", n+1, line)
		}
		s[f[1]] = struct{ crc, module string }{f[0], f[2]}
	}
	return s, nil
}

// compareExports checks that the rebuilt module exports every symbol the
// kernel's module exports, each with the same CRC, so that the kernel's
// other modules load on top of it. module is the kernel's name for it in
// kernel ("drivers/vfio/vfio"); built's module names are ignored.
func compareExports(kernel, built symvers, module string) error {
	var errs []string
	n := 0
	for sym, k := range kernel {
		if k.module != module {
			continue
		}
		n++
		b, ok := built[sym]
		switch {
		case !ok:
			errs = append(errs, sym+" is not exported")
		case b.crc != k.crc:
			errs = append(errs, fmt.Sprintf("%s has CRC %s, the kernel's %s", sym, b.crc, k.crc))
		}
	}
	if n == 0 {
		return fmt.Errorf("the kernel's Module.symvers lists no symbol of %s", module)
	}
	if len(errs) > 0 {
		slices.Sort(errs)
		return fmt.Errorf("rebuilt %s does not match the kernel: %s", module, strings.Join(errs, "; "))
	}
	return nil
}

// EnsureNoIOMMUVFIO returns a vfio.ko for kernel k built with
// CONFIG_VFIO_NOIOMMU=y, building it on a cache miss (see the comment at
// the top of this file). The cache key is the kernel's banner, which names
// its release and Debian version.
func EnsureNoIOMMUVFIO(cache string, k *Kernel) (string, error) {
	img, err := os.ReadFile(k.Vmlinux)
	if err != nil {
		return "", err
	}
	banner, err := debianBanner(img, k.Version)
	img = nil
	if err != nil {
		return "", err
	}
	debVersion, sourcePkg, err := debianKernelVersion(banner)
	if err != nil {
		return "", err
	}
	dir := filepath.Join(cache, "vfio-noiommu")
	name := k.Version + "_" + debVersion + "_r" + noIOMMURecipe
	ko := filepath.Join(dir, name, "vfio.ko")
	if _, err := os.Stat(ko); err == nil {
		return ko, nil
	}
	unlock, err := lockCache(dir, name)
	if err != nil {
		return "", err
	}
	defer unlock()
	if _, err := os.Stat(ko); err == nil {
		return ko, nil
	}
	work := filepath.Join(dir, name, "work")
	if err := os.RemoveAll(work); err != nil {
		return "", err
	}
	b := vfioBuild{kernel: k, debVersion: debVersion, sourcePkg: sourcePkg, work: work}
	built, err := b.build()
	if err != nil {
		return "", fmt.Errorf("building vfio.ko with CONFIG_VFIO_NOIOMMU=y for %s (Debian %s; work files kept in %s): %w",
			k.Version, debVersion, work, err)
	}
	tmp := ko + ".tmp"
	if err := os.Rename(built, tmp); err != nil {
		return "", err
	}
	if err := os.RemoveAll(work); err != nil {
		return "", err
	}
	return ko, os.Rename(tmp, ko)
}

type vfioBuild struct {
	kernel     *Kernel
	debVersion string
	sourcePkg  string
	work       string
}

func (b *vfioBuild) build() (string, error) {
	headersPkg := "linux-headers-" + b.kernel.Version
	out, err := run("", "apt-cache", "depends", headersPkg+"="+b.debVersion)
	if err != nil {
		return "", err
	}
	var pkgs []string
	for _, p := range append([]string{b.sourcePkg, headersPkg}, aptDepends(string(out))...) {
		// linux-compiler-gcc-N-ARCH is an empty package that pulls in
		// gcc-N, which must be on the host already (scripts/deps).
		if p == b.sourcePkg || strings.HasPrefix(p, "linux-headers-") || strings.HasPrefix(p, "linux-kbuild-") {
			pkgs = append(pkgs, p)
		}
	}
	if len(pkgs) < 3 {
		return "", fmt.Errorf("apt-cache depends %s: no linux-headers/linux-kbuild dependencies in\n%s", headersPkg, out)
	}
	dl := filepath.Join(b.work, "download")
	root := filepath.Join(b.work, "root")
	if err := os.MkdirAll(dl, 0o755); err != nil {
		return "", err
	}
	args := []string{"download", "-q"}
	for _, p := range pkgs {
		args = append(args, p+"="+b.debVersion)
	}
	if _, err := run(dl, "apt-get", args...); err != nil {
		return "", err
	}
	for _, p := range pkgs {
		debs, _ := filepath.Glob(filepath.Join(dl, p+"_*.deb"))
		if len(debs) != 1 {
			return "", fmt.Errorf("apt-get download %s: expected one .deb in %s, found %d", p, dl, len(debs))
		}
		if _, err := run("", "dpkg", "-x", debs[0], root); err != nil {
			return "", err
		}
		if err := os.Remove(debs[0]); err != nil {
			return "", err
		}
	}
	headers := filepath.Join(root, "usr", "src", headersPkg)
	config, err := os.ReadFile(filepath.Join(headers, ".config"))
	if err != nil {
		return "", err
	}
	if kconfigValue(string(config), "MODULE_SIG_FORCE") == "y" {
		return "", errors.New("the kernel enforces module signatures (CONFIG_MODULE_SIG_FORCE=y); it would refuse the rebuilt module")
	}
	cc, err := kernelCompiler(string(config))
	if err != nil {
		return "", err
	}
	if _, err := exec.LookPath(cc); err != nil {
		return "", fmt.Errorf("the kernel was built with %s, which is not installed (./scripts/deps installs it): %w", cc, err)
	}
	if err := relocateHeaders(headers, root); err != nil {
		return "", err
	}

	// Only drivers/vfio of the source tree is needed; tar still has to
	// decompress the whole archive (about 10 s).
	tarballs, _ := filepath.Glob(filepath.Join(root, "usr", "src", "linux-source-*.tar.*"))
	if len(tarballs) != 1 {
		return "", fmt.Errorf("%s: expected one source tarball in usr/src, found %d", b.sourcePkg, len(tarballs))
	}
	src := filepath.Join(b.work, "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		return "", err
	}
	top := strings.TrimSuffix(filepath.Base(tarballs[0]), filepath.Ext(tarballs[0]))
	top = strings.TrimSuffix(top, ".tar")
	if _, err := run(src, "tar", "-xf", tarballs[0], top+"/drivers/vfio"); err != nil {
		return "", err
	}
	if err := os.Remove(tarballs[0]); err != nil {
		return "", err
	}
	vfioSrc := filepath.Join(src, top, "drivers", "vfio")
	mk, err := os.ReadFile(filepath.Join(vfioSrc, "Makefile"))
	if err != nil {
		return "", err
	}
	objs, err := vfioObjects(string(mk))
	if err != nil {
		return "", err
	}
	mod := filepath.Join(b.work, "mod")
	if err := os.MkdirAll(mod, 0o755); err != nil {
		return "", err
	}
	ents, err := os.ReadDir(vfioSrc)
	if err != nil {
		return "", err
	}
	for _, e := range ents {
		if n := e.Name(); e.Type().IsRegular() && (strings.HasSuffix(n, ".c") || strings.HasSuffix(n, ".h")) {
			data, err := os.ReadFile(filepath.Join(vfioSrc, n))
			if err != nil {
				return "", err
			}
			if err := os.WriteFile(filepath.Join(mod, n), data, 0o644); err != nil {
				return "", err
			}
		}
	}
	kbuild := "# vfio.ko alone, as drivers/vfio/Makefile builds it, with CONFIG_VFIO_NOIOMMU=y.\n" +
		"obj-m := vfio.o\n" + strings.Join(objs, "\n") + "\n" +
		"ccflags-y += -DCONFIG_VFIO_NOIOMMU=1\n"
	if err := os.WriteFile(filepath.Join(mod, "Kbuild"), []byte(kbuild), 0o644); err != nil {
		return "", err
	}
	if _, err := run("", "make", "-s", "-C", headers, "M="+mod, "CONFIG_VFIO_NOIOMMU=y", "modules"); err != nil {
		return "", err
	}

	kernelSyms, err := os.ReadFile(filepath.Join(headers, "Module.symvers"))
	if err != nil {
		return "", err
	}
	builtSyms, err := os.ReadFile(filepath.Join(mod, "Module.symvers"))
	if err != nil {
		return "", err
	}
	ks, err := parseSymvers(string(kernelSyms))
	if err != nil {
		return "", err
	}
	bs, err := parseSymvers(string(builtSyms))
	if err != nil {
		return "", err
	}
	if err := compareExports(ks, bs, "drivers/vfio/vfio"); err != nil {
		return "", err
	}
	built := filepath.Join(mod, "vfio.ko")
	data, err := os.ReadFile(built)
	if err != nil {
		return "", err
	}
	if !bytes.Contains(data, []byte("vermagic="+b.kernel.Version+" ")) {
		return "", fmt.Errorf("%s: no vermagic for %s", built, b.kernel.Version)
	}
	if !bytes.Contains(data, []byte("parm=enable_unsafe_noiommu_mode:")) {
		return "", fmt.Errorf("%s has no enable_unsafe_noiommu_mode parameter: CONFIG_VFIO_NOIOMMU did not take", built)
	}
	// As Debian ships its modules: without debug information (a tenth of
	// the size in the initramfs).
	stripped := filepath.Join(b.work, "vfio.ko")
	if _, err := run("", "objcopy", "--strip-debug", built, stripped); err != nil {
		return "", err
	}
	return stripped, nil
}

// relocateHeaders points the flavour headers' Makefile, which includes the
// common headers by their installed path (/usr/src/...), at the copy
// unpacked under root.
func relocateHeaders(headers, root string) error {
	path := filepath.Join(headers, "Makefile")
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var out strings.Builder
	sc := bufio.NewScanner(bytes.NewReader(data))
	changed := false
	for sc.Scan() {
		line := sc.Text()
		if inc, ok := strings.CutPrefix(line, "include /usr/src/"); ok {
			line = "include " + filepath.Join(root, "usr", "src", inc)
			changed = true
		}
		out.WriteString(line + "\n")
	}
	if err := sc.Err(); err != nil {
		return err
	}
	if !changed {
		return fmt.Errorf("%s includes nothing from /usr/src; unknown headers layout", path)
	}
	return os.WriteFile(path, []byte(out.String()), 0o644)
}
