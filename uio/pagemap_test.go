package uio

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writePagemap writes a sparse fake pagemap with the given entries for the
// pages starting at vaddr.
func writePagemap(t *testing.T, vaddr uintptr, entries ...uint64) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "pagemap")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 8*len(entries))
	for i, e := range entries {
		binary.NativeEndian.PutUint64(buf[8*i:], e)
	}
	if _, err := f.WriteAt(buf, int64(vaddr/4096)*8); err != nil {
		t.Fatal(err)
	}
	return path
}

const present = pagemapPresent

func TestPhysPages(t *testing.T) {
	const va = 0x7f12_3400_0000
	// Soft-dirty, exclusive and file bits must not leak into the PFN.
	pm := writePagemap(t, va, present|1<<55|1<<56|1<<61|0x12345, present|0x7ffffffffffff)
	f, err := os.Open(pm)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got, err := physPages(f, va, 2, 4096)
	if err != nil {
		t.Fatal(err)
	}
	if got[0] != 0x12345000 || got[1] != 0x7ffffffffffff000 {
		t.Errorf("physPages = %#x", got)
	}
}

func TestPhysPagesRejects(t *testing.T) {
	const va = 0x7f00_0020_0000
	for _, tc := range []struct {
		name  string
		entry uint64
		want  string
		is    error
	}{
		{"not present", 0x1234, "not present", nil},
		{"swapped", present | pagemapSwapped | 0x1234, "swapped", nil},
		{"pfn hidden", present, "needs CAP_SYS_ADMIN", ErrNoPhysAddr},
		{"pfn hidden, flags set", present | 1<<61 | 1<<56, "needs CAP_SYS_ADMIN", ErrNoPhysAddr},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pm := writePagemap(t, va, tc.entry)
			_, err := physOf(pm, va, 4096)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("physOf = %v, want %q", err, tc.want)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error %v does not match %v", err, tc.is)
			}
		})
	}
}

func TestPhysContiguous(t *testing.T) {
	const va = 0x7f00_0040_0000
	entries := make([]uint64, 512)
	for i := range entries {
		entries[i] = present | uint64(0x40000+i) // 2 MiB at 1 GiB physical
	}
	pm := writePagemap(t, va, entries...)
	pa, err := physOf(pm, va, 2<<20)
	if err != nil || pa != 0x40000000 {
		t.Fatalf("physOf = %#x, %v; want 0x40000000", pa, err)
	}
	// One page out of place anywhere breaks contiguity.
	entries[300] = present | 0x99999
	pm = writePagemap(t, va, entries...)
	if _, err := physOf(pm, va, 2<<20); err == nil || !strings.Contains(err.Error(), "page 300") {
		t.Fatalf("physOf with page 300 elsewhere = %v", err)
	}
}

func TestPhysPagesShortFile(t *testing.T) {
	pm := writePagemap(t, 0x1000, present|1)
	if _, err := physOf(pm, 0x2000, 4096); err == nil {
		t.Fatal("read past the end of pagemap succeeded")
	}
	if _, err := physOf(filepath.Join(t.TempDir(), "none"), 0x1000, 4096); err == nil {
		t.Fatal("missing pagemap accepted")
	}
	f, _ := os.Open(pm)
	defer f.Close()
	for _, tc := range []struct {
		va   uintptr
		n    int
		page int
	}{{0x1001, 1, 4096}, {0x1000, 0, 4096}, {0x1000, 1, 3000}} {
		if _, err := physPages(f, tc.va, tc.n, tc.page); err == nil {
			t.Errorf("physPages(%#x, %d, %d) accepted", tc.va, tc.n, tc.page)
		}
	}
}
