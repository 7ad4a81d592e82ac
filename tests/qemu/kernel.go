package qemu

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Kernel is a Debian kernel unpacked in the cache (never installed).
type Kernel struct {
	// Version is the module directory name, e.g. "6.1.0-56-amd64".
	Version string
	// Package is the Debian package it came from.
	Package string
	// Root is the dpkg -x tree: Root/boot/vmlinuz-*, Root/lib/modules/Version.
	Root string
	// Vmlinux is the uncompressed ELF kernel booted through PVH.
	Vmlinux string
}

// GuestModules are the kernel modules every test guest carries (with their
// dependencies): the in-kernel driver the project is compared with, and the
// uio binding vserial uses.
var GuestModules = []string{"virtio_pci", "virtio_console", "uio_pci_generic"}

// metapackage is resolved to the real kernel package at cache-miss time.
const metapackage = "linux-image-amd64"

// resolveKernelPackage asks apt which package linux-image-amd64 depends on.
func resolveKernelPackage() (string, error) {
	out, err := run("", "apt-cache", "depends", metapackage)
	if err != nil {
		return "", err
	}
	for line := range strings.Lines(string(out)) {
		dep, ok := strings.CutPrefix(strings.TrimSpace(line), "Depends:")
		if dep = strings.TrimSpace(dep); ok && strings.HasPrefix(dep, "linux-image-") {
			return dep, nil
		}
	}
	return "", fmt.Errorf("apt-cache depends %s: no linux-image dependency in\n%s", metapackage, out)
}

// EnsureKernel returns the cached kernel, downloading and unpacking it on a
// cache miss. If apt cannot resolve the package (offline), the newest kernel
// already in the cache is used.
func EnsureKernel(cache string) (*Kernel, error) {
	kdir := filepath.Join(cache, "kernel")
	pkg, rerr := resolveKernelPackage()
	if rerr != nil {
		cached, _ := filepath.Glob(filepath.Join(kdir, "linux-image-*", "done"))
		if len(cached) == 0 {
			return nil, rerr
		}
		slices.Sort(cached)
		pkg = filepath.Base(filepath.Dir(cached[len(cached)-1]))
	}
	k := &Kernel{
		Package: pkg,
		Version: strings.TrimPrefix(pkg, "linux-image-"),
		Root:    filepath.Join(kdir, pkg, "root"),
		Vmlinux: filepath.Join(kdir, pkg, "vmlinux"),
	}
	done := filepath.Join(kdir, pkg, "done")
	if _, err := os.Stat(done); err == nil {
		return k, nil
	}
	unlock, err := lockCache(kdir, pkg)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if _, err := os.Stat(done); err == nil {
		return k, nil
	}
	if err := fetchKernel(k); err != nil {
		return nil, err
	}
	return k, os.WriteFile(done, []byte(k.Version+"\n"), 0o644)
}

func fetchKernel(k *Kernel) error {
	dir := filepath.Dir(k.Root)
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	dl := filepath.Join(dir, "download")
	if err := os.MkdirAll(dl, 0o755); err != nil {
		return err
	}
	// apt-get download drops privileges to _apt, which may not be able to
	// write here; that only costs a warning.
	if _, err := run(dl, "apt-get", "download", "-q", k.Package); err != nil {
		return err
	}
	debs, _ := filepath.Glob(filepath.Join(dl, k.Package+"_*.deb"))
	if len(debs) != 1 {
		return fmt.Errorf("apt-get download %s: expected one .deb in %s, found %d", k.Package, dl, len(debs))
	}
	if _, err := run("", "dpkg", "-x", debs[0], k.Root); err != nil {
		return err
	}
	if err := os.RemoveAll(dl); err != nil {
		return err
	}
	// The package ships no modules.dep.
	if _, err := run("", "depmod", "-b", k.Root, k.Version); err != nil {
		return err
	}
	bz, err := os.ReadFile(filepath.Join(k.Root, "boot", "vmlinuz-"+k.Version))
	if err != nil {
		return err
	}
	elf, err := ExtractVmlinux(bz)
	if err != nil {
		return err
	}
	return os.WriteFile(k.Vmlinux, elf, 0o644)
}

// ModuleFiles returns the modules named (and their dependencies) as
// initramfs files under /lib/modules/VERSION, plus a modules.dep for just
// those modules, so that modprobe works in the guest.
func (k *Kernel) ModuleFiles(names ...string) ([]File, error) {
	modDir := filepath.Join(k.Root, "lib", "modules", k.Version)
	var rels []string
	for _, name := range names {
		out, err := run("", "modprobe", "-d", k.Root, "-S", k.Version, "--show-depends", name)
		if err != nil {
			return nil, err
		}
		sc := bufio.NewScanner(bytes.NewReader(out))
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) < 2 || f[0] != "insmod" {
				continue // "builtin NAME"
			}
			rel, err := filepath.Rel(modDir, f[1])
			if err != nil || strings.HasPrefix(rel, "..") {
				return nil, fmt.Errorf("modprobe --show-depends %s: %s is outside %s", name, f[1], modDir)
			}
			if !slices.Contains(rels, rel) {
				rels = append(rels, rel)
			}
		}
	}
	if len(rels) == 0 {
		return nil, errors.New("kernel modules: nothing to load")
	}
	dep, err := os.ReadFile(filepath.Join(modDir, "modules.dep"))
	if err != nil {
		return nil, err
	}
	var sub strings.Builder
	for line := range strings.Lines(string(dep)) {
		mod, _, _ := strings.Cut(line, ":")
		if slices.Contains(rels, mod) {
			sub.WriteString(line)
		}
	}
	guestDir := "/lib/modules/" + k.Version
	files := []File{{Dst: guestDir + "/modules.dep", Data: []byte(sub.String())}}
	for _, rel := range rels {
		files = append(files, File{Dst: guestDir + "/" + filepath.ToSlash(rel), Src: filepath.Join(modDir, rel), Mode: 0o644})
	}
	return files, nil
}

// replaceModule makes the initramfs file of the module at rel (relative to
// the module directory, e.g. "kernel/drivers/vfio/vfio.ko") come from src.
func replaceModule(files []File, rel, src string) error {
	for i := range files {
		if dir, ok := strings.CutPrefix(files[i].Dst, "/lib/modules/"); ok {
			if _, r, ok := strings.Cut(dir, "/"); ok && r == rel {
				files[i].Src, files[i].Data = src, nil
				return nil
			}
		}
	}
	return fmt.Errorf("no module %s among the guest's modules", rel)
}
