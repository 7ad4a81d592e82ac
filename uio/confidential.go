package uio

import (
	"bufio"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
)

// Confidential reports whether this looks like a confidential-computing
// guest (AMD SEV/SEV-ES/SEV-SNP or Intel TDX) and which kind. In such a
// guest private memory is encrypted and a device can only reach pages the
// kernel has explicitly shared, so a userspace driver that gives the device
// physical addresses of its own memory cannot work.
//
// Detection is best-effort: the CPU flags the guest kernel shows in cpuinfo
// ("tdx_guest"; "sev", "sev_es", "sev_snp" together with "hypervisor", so an
// SEV-capable host is not mistaken for a guest) and the guest attestation
// devices (/dev/sev-guest, /dev/tdx_guest). A guest whose kernel hides all
// of these is not detected; Options.IgnoreConfidential overrides a wrong
// positive.
func Confidential(cpuinfo, dev string) (kind string, err error) {
	f, err := os.Open(cpuinfo)
	if err != nil {
		return "", err
	}
	defer f.Close()
	flags, err := cpuFlags(f)
	if err != nil {
		return "", fmt.Errorf("%s: %w", cpuinfo, err)
	}
	switch {
	case flags["tdx_guest"]:
		return "Intel TDX", nil
	case flags["hypervisor"] && flags["sev_snp"]:
		return "AMD SEV-SNP", nil
	case flags["hypervisor"] && flags["sev_es"]:
		return "AMD SEV-ES", nil
	case flags["hypervisor"] && flags["sev"]:
		return "AMD SEV", nil
	}
	for name, kind := range map[string]string{"sev-guest": "AMD SEV-SNP", "tdx_guest": "Intel TDX"} {
		if _, err := os.Stat(filepath.Join(dev, name)); err == nil {
			return kind, nil
		}
	}
	return "", nil
}

// cpuFlags returns the flags of the first processor in a cpuinfo file.
func cpuFlags(f *os.File) (map[string]bool, error) {
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok || strings.TrimSpace(key) != "flags" {
			continue
		}
		m := map[string]bool{}
		for _, fl := range strings.Fields(val) {
			m[fl] = true
		}
		return m, nil
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return nil, errors.New("no flags line")
}

// RefuseConfidential fails in an SEV/TDX guest, where a device cannot reach
// private memory by its physical address.
func RefuseConfidential(opts Options, dev string, log *slog.Logger) error {
	ci := opts.CPUInfo
	if ci == "" {
		ci = "/proc/cpuinfo"
	}
	kind, err := Confidential(ci, dev)
	if err != nil {
		log.Warn("uio: cannot tell whether this is a confidential guest", "err", err)
		return nil
	}
	if kind != "" {
		return fmt.Errorf("%w (%s): the device can only reach memory the kernel shares, so a driver that gives it physical addresses cannot work; use the in-kernel virtio_console driver", ErrConfidential, kind)
	}
	return nil
}
