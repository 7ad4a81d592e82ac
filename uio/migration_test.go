package uio

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeMemoryTree writes the sysfs and meminfo files MigrationRisks reads.
func fakeMemoryTree(t *testing.T, sysfs string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(sysfs, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestMigrationRisks(t *testing.T) {
	root := t.TempDir()
	sysfs, mi := filepath.Join(root, "sys"), filepath.Join(root, "meminfo")
	os.WriteFile(mi, []byte("MemTotal:        492816 kB\nCmaTotal:              0 kB\nHugetlb:            2048 kB\n"), 0o644)
	// A plain guest: memory blocks in Normal, no offlining, no CMA.
	fakeMemoryTree(t, sysfs, map[string]string{
		"devices/system/memory/memory0/valid_zones": "DMA32\n",
		"devices/system/memory/memory0/removable":   "0\n",
		"bus/virtio/devices/virtio0/device":         "0x0003\n",
	})
	if got := MigrationRisks(sysfs, mi); len(got) != 0 {
		t.Fatalf("plain guest: %+v", got)
	}
	// Offlining compiled in: only an operator's action can move pages.
	fakeMemoryTree(t, sysfs, map[string]string{"devices/system/memory/memory0/removable": "1\n"})
	got := MigrationRisks(sysfs, mi)
	if len(got) != 1 || got[0].Likely || !strings.Contains(got[0].Reason, "offlining") {
		t.Fatalf("offlining: %+v", got)
	}
	// Each likely configuration on its own.
	for name, files := range map[string]map[string]string{
		"virtio-mem": {"bus/virtio/devices/virtio1/device": "0x0018\n"},
		"dimm":       {"bus/acpi/devices/PNP0C80:00/path": "\\_SB_.MHPC\n"},
		"movable":    {"devices/system/memory/memory9/valid_zones": "Movable\n"},
	} {
		s := filepath.Join(root, name)
		fakeMemoryTree(t, s, files)
		got := MigrationRisks(s, mi)
		if len(got) != 1 || !got[0].Likely {
			t.Errorf("%s: %+v", name, got)
		}
	}
	os.WriteFile(mi, []byte("MemTotal:        492816 kB\nCmaTotal:          16384 kB\n"), 0o644)
	if got := MigrationRisks(filepath.Join(root, "none"), mi); len(got) != 1 || !got[0].Likely || !strings.Contains(got[0].Reason, "16384 kB") {
		t.Errorf("cma: %+v", got)
	}
	// Unreadable or malformed files count as absent.
	os.WriteFile(mi, []byte("CmaTotal: lots\n"), 0o644)
	if got := MigrationRisks(filepath.Join(root, "none"), mi); len(got) != 0 {
		t.Errorf("malformed meminfo: %+v", got)
	}
}

// Open of a uio function warns about a virtio-mem device.
func TestOpenWarnsOfMigration(t *testing.T) {
	ff := newFakeFn(t)
	fakeMemoryTree(t, ff.sysfs, map[string]string{"bus/virtio/devices/virtio1/device": "0x0018\n"})
	var log bytes.Buffer
	ff.opts.Logger = slog.New(slog.NewTextHandler(&log, nil))
	ff.opts.Meminfo = filepath.Join(t.TempDir(), "absent")
	f, err := Open(ff.sysfs, ff.dev, testAddr, ff.opts)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if !strings.Contains(log.String(), "level=WARN msg=\"uio: DMA pages can be migrated under the device\" reason=\"1 virtio-mem device(s)") {
		t.Errorf("no warning in the log:\n%s", log.String())
	}
}
