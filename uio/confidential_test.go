package uio

import (
	"os"
	"path/filepath"
	"testing"
)

func TestConfidential(t *testing.T) {
	const head = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\n"
	for _, tc := range []struct {
		name, cpuinfo, devNode, want string
	}{
		{"plain guest", head + "flags\t\t: fpu vme de pse hypervisor lahf_lm\n", "", ""},
		{"sev host", head + "flags\t\t: fpu sme sev sev_es sev_snp\n", "", ""},
		{"sev guest", head + "flags\t\t: fpu hypervisor sme sev\n", "", "AMD SEV"},
		{"sev-es guest", head + "flags\t\t: fpu hypervisor sev sev_es\n", "", "AMD SEV-ES"},
		{"snp guest", head + "flags\t\t: fpu hypervisor sev sev_es sev_snp\n", "", "AMD SEV-SNP"},
		{"tdx guest", head + "flags\t\t: fpu hypervisor tdx_guest\n", "", "Intel TDX"},
		{"snp device only", head + "flags\t\t: fpu hypervisor\n", "sev-guest", "AMD SEV-SNP"},
		{"tdx device only", head + "flags\t\t: fpu hypervisor\n", "tdx_guest", "Intel TDX"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			ci := filepath.Join(dir, "cpuinfo")
			os.WriteFile(ci, []byte(tc.cpuinfo), 0o644)
			dev := filepath.Join(dir, "dev")
			os.Mkdir(dev, 0o755)
			if tc.devNode != "" {
				os.WriteFile(filepath.Join(dev, tc.devNode), nil, 0o644)
			}
			got, err := Confidential(ci, dev)
			if err != nil || got != tc.want {
				t.Errorf("Confidential = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestConfidentialBadInput(t *testing.T) {
	dir := t.TempDir()
	if _, err := Confidential(filepath.Join(dir, "none"), dir); err == nil {
		t.Error("missing cpuinfo accepted")
	}
	ci := filepath.Join(dir, "cpuinfo")
	os.WriteFile(ci, []byte("processor\t: 0\n"), 0o644)
	if _, err := Confidential(ci, dir); err == nil {
		t.Error("cpuinfo without flags accepted")
	}
}
