package main

// Loading kernel modules without kmod: modprobe resolves modules.dep and
// insmods each module with finit_module.

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/vserial/vserial/internal/kcmdline"
)

// modprobe loads each module and its dependencies from
// /lib/modules/$(uname -r)/modules.dep with finit_module(2). Modules that are
// already loaded (or built in) are fine. As kmod's modprobe does, it gives
// each module the MODULE.PARAM=VALUE parameters of the kernel command line
// (e.g. vfio.enable_unsafe_noiommu_mode=1). Not u-root's kmodule.Probe
// (which the agent uses): that passes parameters to the named module only,
// so vfio pulled in by vfio-pci would miss its no-IOMMU switch.
func modprobe(args []string) error {
	// Flags of kmod's modprobe (-q, -b, ...) change nothing here.
	for len(args) > 0 && strings.HasPrefix(args[0], "-") {
		args = args[1:]
	}
	if len(args) == 0 {
		return errors.New("usage: modprobe MODULE [MODULE ...]")
	}
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return err
	}
	dir := filepath.Join("/lib/modules", unix.ByteSliceToString(u.Release[:]))
	deps, err := readModulesDep(filepath.Join(dir, "modules.dep"))
	if err != nil {
		return err
	}
	cmdline, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return err
	}
	loaded := map[string]bool{}
	var load func(rel string, depth int) error
	load = func(rel string, depth int) error {
		if loaded[rel] {
			return nil
		}
		if depth > 64 {
			return fmt.Errorf("dependency loop at %s", rel)
		}
		for _, d := range deps[rel] {
			if err := load(d, depth+1); err != nil {
				return err
			}
		}
		loaded[rel] = true
		return insmod(filepath.Join(dir, rel), kcmdline.ModuleParams(string(cmdline), moduleName(rel)))
	}
	for _, name := range args {
		rel := findModule(deps, name)
		if rel == "" {
			return fmt.Errorf("module %s not found in %s/modules.dep", name, dir)
		}
		if err := load(rel, 0); err != nil {
			return err
		}
	}
	return nil
}

func readModulesDep(path string) (map[string][]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	deps := map[string][]string{}
	for line := range strings.Lines(string(b)) {
		mod, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		deps[mod] = strings.Fields(rest)
	}
	return deps, nil
}

func moduleName(rel string) string {
	base, _, _ := strings.Cut(filepath.Base(rel), ".ko")
	return strings.ReplaceAll(base, "-", "_")
}

func findModule(deps map[string][]string, name string) string {
	name = strings.ReplaceAll(name, "-", "_")
	for rel := range deps {
		if moduleName(rel) == name {
			return rel
		}
	}
	return ""
}

func insmod(path, params string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	flags := 0
	if !strings.HasSuffix(path, ".ko") {
		flags = unix.MODULE_INIT_COMPRESSED_FILE
	}
	if err := unix.FinitModule(int(f.Fd()), params, flags); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("finit_module %s: %w", path, err)
	}
	return nil
}
