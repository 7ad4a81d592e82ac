package devopen

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/vserial/vserial/pciscan"
	"github.com/vserial/vserial/vfio"
)

// Kernel modules the bindings load. vfio-pci pulls in vfio, vfio-pci-core
// and the rest through modules.dep; the type1 IOMMU backend is a module of
// its own that nothing depends on, so the VFIO path loads it explicitly
// (a u-root guest has no usermode helper that would load it on demand).
const (
	vfioModule      = "vfio-pci"
	vfioType1Module = "vfio_iommu_type1"
	noIOMMUGroup    = "vfio-noiommu" // the name vfio gives its fake no-IOMMU groups
)

// Env is where Choose looks: the sysfs root and the module
// directory of the running kernel (/lib/modules/RELEASE).
type Env struct {
	Sysfs   string
	Modules string // "" when unknown: no module counts as loadable
}

// HostEnv is the Env of the running system under sysfs.
func HostEnv(sysfs string) Env {
	return Env{Sysfs: sysfs, Modules: kernelModulesDir()}
}

// kernelModulesDir is /lib/modules/$(uname -r), or "" if uname fails.
func kernelModulesDir() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}
	return filepath.Join("/lib/modules", unix.ByteSliceToString(u.Release[:]))
}

// Choice is the binding --bind auto takes for one function, and why.
type Choice struct {
	Bind   string // BindUIO or BindVFIO
	Reason string // e.g. "IOMMU group 5", "no IOMMU group"
}

func (c Choice) String() string { return c.Bind + " (" + c.Reason + ")" }

// Choose decides what --bind auto does with f: VFIO type1 when the
// function sits in an IOMMU group that a real IOMMU translates for (not a
// vfio no-IOMMU group) and vfio-pci is registered or its module can be
// loaded; uio_pci_generic otherwise. This is the one place the decision is
// made: `run` acts on it and `list` shows it.
func Choose(env Env, f pciscan.Function) Choice {
	if f.IOMMUGroup == "" {
		return Choice{BindUIO, "no IOMMU group"}
	}
	if isNoIOMMUGroup(env.Sysfs, f.IOMMUGroup) {
		return Choice{BindUIO, fmt.Sprintf("IOMMU group %s is vfio no-IOMMU, no IOMMU translates", f.IOMMUGroup)}
	}
	if !pciscan.DriverRegistered(env.Sysfs, vfio.Driver) && !moduleAvailable(env.Modules, vfioModule) {
		return Choice{BindUIO, fmt.Sprintf("IOMMU group %s, but vfio-pci is neither registered nor loadable", f.IOMMUGroup)}
	}
	return Choice{BindVFIO, "IOMMU group " + f.IOMMUGroup}
}

// isNoIOMMUGroup reports whether IOMMU group group is one vfio made up for
// no-IOMMU mode (SYSFS/kernel/iommu_groups/GROUP/name is "vfio-noiommu").
func isNoIOMMUGroup(sysfs, group string) bool {
	b, err := os.ReadFile(filepath.Join(sysfs, "kernel", "iommu_groups", group, "name"))
	return err == nil && strings.TrimSpace(string(b)) == noIOMMUGroup
}

// moduleAvailable reports whether module name is built in or can be loaded
// from dir (listed in modules.builtin or modules.dep). Dashes and
// underscores are the same to the kernel.
func moduleAvailable(dir, name string) bool {
	if dir == "" {
		return false
	}
	want := strings.ReplaceAll(name, "-", "_")
	for _, list := range []string{"modules.builtin", "modules.dep"} {
		if found, _ := listsModule(filepath.Join(dir, list), want); found {
			return true
		}
	}
	return false
}

// listsModule scans a modules.dep or modules.builtin file for a module
// file named want (.ko with or without a compression suffix) at the start
// of a line.
func listsModule(path, want string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		mod, _, _ := strings.Cut(sc.Text(), ":")
		base := filepath.Base(strings.TrimSpace(mod))
		base, ok := strings.CutSuffix(trimCompression(base), ".ko")
		if ok && strings.ReplaceAll(base, "-", "_") == want {
			return true, nil
		}
	}
	return false, sc.Err()
}

func trimCompression(s string) string {
	for _, suf := range []string{".xz", ".zst", ".gz"} {
		if t, ok := strings.CutSuffix(s, suf); ok {
			return t
		}
	}
	return s
}

// errNoIOMMUUnavailable is returned by prepareVFIO for a function that no
// IOMMU translates for when vfio is not in no-IOMMU mode.
var errNoIOMMUUnavailable = errors.New("no IOMMU group and vfio is not in no-IOMMU mode")

// vfioMode is how a function will be used through VFIO.
type vfioMode struct {
	NoIOMMU bool   // no-IOMMU mode (/dev/vfio/noiommu-N)
	Group   string // the IOMMU group before binding ("" for no-IOMMU)
}

// checkVFIO looks, before the function is taken, at whether VFIO can work
// for f (vfio-pci must be registered by then): type1 when f sits in a real
// IOMMU group that holds nothing another driver uses; no-IOMMU mode when f
// has no group and vfio runs with enable_unsafe_noiommu_mode=1; a clear
// error otherwise. Failing here leaves the function where it was.
func checkVFIO(sysfs string, f pciscan.Function) (vfioMode, error) {
	if f.IOMMUGroup != "" && !isNoIOMMUGroup(sysfs, f.IOMMUGroup) {
		members, err := vfio.ReadGroup(sysfs, f.IOMMUGroup)
		if err != nil {
			return vfioMode{}, fmt.Errorf("--bind vfio: read IOMMU group %s of %s: %w", f.IOMMUGroup, f.Addr, err)
		}
		if err := vfio.CheckGroup(f.Addr, f.IOMMUGroup, members); err != nil {
			return vfioMode{}, fmt.Errorf("--bind vfio: %w", err)
		}
		return vfioMode{Group: f.IOMMUGroup}, nil
	}
	if f.IOMMUGroup != "" { // already bound to vfio-pci in no-IOMMU mode
		return vfioMode{NoIOMMU: true}, nil
	}
	param := filepath.Join(sysfs, "module", "vfio", "parameters", "enable_unsafe_noiommu_mode")
	b, err := os.ReadFile(param)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return vfioMode{}, fmt.Errorf("--bind vfio: %s: %w, and this kernel's vfio has no no-IOMMU mode (%s missing: built without CONFIG_VFIO_NOIOMMU); "+
			"boot with an IOMMU (intel_iommu=on or amd_iommu=on; in a VM add a virtual IOMMU) or use --bind uio", f.Addr, errNoIOMMUUnavailable, param)
	case err != nil:
		return vfioMode{}, fmt.Errorf("--bind vfio: %s: %w (%v)", f.Addr, errNoIOMMUUnavailable, err)
	case strings.TrimSpace(string(b)) != "Y":
		return vfioMode{}, fmt.Errorf("--bind vfio: %s: %w: boot with an IOMMU (intel_iommu=on or amd_iommu=on) for the safe type1 mode, "+
			"or turn the unsafe mode on (vfio.enable_unsafe_noiommu_mode=1 on the kernel command line, or write Y to %s), or use --bind uio", f.Addr, errNoIOMMUUnavailable, param)
	}
	return vfioMode{NoIOMMU: true}, nil
}
