package uio

import (
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
)

// QEMU virtio-serial-pci, transitional, on q35 (VIRTIO-NOTES §1 BAR layout),
// as printed by /sys/bus/pci/devices/0000:00:03.0/resource.
const qemuResources = `0x000000000000c040 0x000000000000c07f 0x0000000000040101
0x00000000febd1000 0x00000000febd1fff 0x0000000000040200
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000fe0000000000 0x0000fe0000003fff 0x000000000014220c
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x00000000feb80000 0x00000000febbffff 0x0000000000046200
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000000000000000 0x0000000000000000 0x0000000000000000
`

func TestParseResourcesQEMU(t *testing.T) {
	rs, err := parseResources(qemuResources)
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 13 {
		t.Fatalf("%d resources, want 13", len(rs))
	}
	if !rs[0].IO() || rs[0].Mem() || rs[0].Size() != 0x40 {
		t.Errorf("BAR0 = %+v: want I/O, 64 bytes", rs[0])
	}
	if !rs[1].Mem() || rs[1].Prefetchable() || rs[1].Mem64() || rs[1].Size() != 0x1000 {
		t.Errorf("BAR1 = %+v: want 32-bit memory, 4 KiB", rs[1])
	}
	if rs[2].IO() || rs[2].Mem() || rs[2].Size() != 0 {
		t.Errorf("BAR2 = %+v: want absent", rs[2])
	}
	if !rs[4].Mem() || !rs[4].Prefetchable() || !rs[4].Mem64() || rs[4].Size() != 0x4000 {
		t.Errorf("BAR4 = %+v: want 64-bit prefetchable memory, 16 KiB", rs[4])
	}
}

func TestParseResourcesMalformed(t *testing.T) {
	for _, s := range []string{
		"",
		"0x0 0x0 0x0",                   // no newline
		"0x0 0x0\n",                     // two fields
		"0x0 0x0 0x0 0x0\n",             // four
		"0 0x0 0x0\n",                   // no 0x
		"0x 0x0 0x0\n",                  // empty digits
		"0x0 0xg 0x0\n",                 // not hex
		"0x0 0x0 0x10000000000000000\n", // overflow
		"0x2000 0x1000 0x200\n",         // end before start
		"0x0 0x0 0x0\n\n",               // empty line
	} {
		if rs, err := parseResources(s); err == nil {
			t.Errorf("parseResources(%q) = %v, want error", s, rs)
		}
	}
}

// fakeBARDir makes a function directory with a resource file and backing
// files for BAR0 (I/O, 64 bytes) and BAR4 (memory, 16 KiB), as regular files:
// mmap and pread/pwrite work on them the way they do on sysfs resource files.
func fakeBARDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	write := func(name string, data []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("resource", []byte(qemuResources))
	write("resource0", make([]byte, 0x40))
	write("resource4", make([]byte, 0x4000))
	return dir
}

func TestMemBAR(t *testing.T) {
	dir := fakeBARDir(t)
	rs, _ := parseResources(qemuResources)
	b, err := openBAR(dir, 4, rs[4])
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if b.Len() != 0x4000 || b.IO() {
		t.Fatalf("Len = %#x IO = %v", b.Len(), b.IO())
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(b.Write32(0x3000, 0x11223344))
	must(b.Write16(0x3004, 0x5566))
	must(b.Write8(0x3006, 0x77))
	must(b.Write8(0x3fff, 0xee))
	if v, err := b.Read32(0x3000); err != nil || v != 0x11223344 {
		t.Errorf("Read32 = %#x, %v", v, err)
	}
	if v, err := b.Read16(0x3002); err != nil || v != 0x1122 {
		t.Errorf("Read16 = %#x, %v", v, err)
	}
	if v, err := b.Read8(0x3003); err != nil || v != 0x11 {
		t.Errorf("Read8 = %#x, %v", v, err)
	}
	// The mapping is MAP_SHARED: the stores reached the file, little-endian.
	data, err := os.ReadFile(filepath.Join(dir, "resource4"))
	must(err)
	if got := data[0x3000:0x3007]; string(got) != "\x44\x33\x22\x11\x66\x55\x77" || data[0x3fff] != 0xee {
		t.Errorf("file bytes % x", got)
	}
	checkBadAccesses(t, b)
	must(b.Close())
	must(b.Close()) // idempotent
	if _, err := b.Read32(0); !errors.Is(err, ErrClosed) {
		t.Errorf("Read32 after close = %v, want ErrClosed", err)
	}
}

func checkBadAccesses(t *testing.T, b *BAR) {
	t.Helper()
	n := b.Len()
	for _, tc := range []struct {
		off   uint64
		width int
	}{
		{n, 1}, {n - 1, 2}, {n - 2, 4}, {1, 2}, {2, 4}, {^uint64(0), 1}, {^uint64(0) - 3, 4},
	} {
		var err error
		switch tc.width {
		case 1:
			_, err = b.Read8(tc.off)
			if err == nil {
				err = b.Write8(tc.off, 0)
			}
		case 2:
			_, err = b.Read16(tc.off)
			if e := b.Write16(tc.off, 0); e == nil {
				err = nil
			}
		case 4:
			_, err = b.Read32(tc.off)
			if e := b.Write32(tc.off, 0); e == nil {
				err = nil
			}
		}
		if !errors.Is(err, ErrBadAccess) {
			t.Errorf("%d-byte access at %#x of %#x: %v, want ErrBadAccess", tc.width, tc.off, n, err)
		}
	}
}

func TestIOBAR(t *testing.T) {
	dir := fakeBARDir(t)
	rs, _ := parseResources(qemuResources)
	b, err := openBAR(dir, 0, rs[0])
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if b.Len() != 0x40 || !b.IO() {
		t.Fatalf("Len = %#x IO = %v", b.Len(), b.IO())
	}
	// Legacy register block: guest features at 4, queue notify at 16, status at 18.
	if err := b.Write32(4, 0xdeadbeef); err != nil {
		t.Fatal(err)
	}
	if err := b.Write16(16, 0x0102); err != nil {
		t.Fatal(err)
	}
	if err := b.Write8(18, 0x0f); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(filepath.Join(dir, "resource0"))
	if binary.NativeEndian.Uint32(data[4:]) != 0xdeadbeef || binary.NativeEndian.Uint16(data[16:]) != 0x0102 || data[18] != 0x0f {
		t.Errorf("file bytes % x", data[:20])
	}
	if v, err := b.Read32(4); err != nil || v != 0xdeadbeef {
		t.Errorf("Read32 = %#x, %v", v, err)
	}
	if v, err := b.Read16(16); err != nil || v != 0x0102 {
		t.Errorf("Read16 = %#x, %v", v, err)
	}
	if v, err := b.Read8(18); err != nil || v != 0x0f {
		t.Errorf("Read8 = %#x, %v", v, err)
	}
	checkBadAccesses(t, b)
	// A resource file shorter than the BAR gives a short read, reported.
	if err := os.Truncate(filepath.Join(dir, "resource0"), 0x20); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Read32(0x3c); err == nil || !strings.Contains(err.Error(), "short read") {
		t.Errorf("Read32 past the file = %v, want a short read", err)
	}
}

func TestOpenAbsentBAR(t *testing.T) {
	rs, _ := parseResources(qemuResources)
	if _, err := openBAR(fakeBARDir(t), 2, rs[2]); !errors.Is(err, ErrNoBAR) {
		t.Fatalf("openBAR(2) = %v, want ErrNoBAR", err)
	}
}

// TestMMIOAccessorsAreSingleMoves compiles this package with -S and checks
// that each MMIO accessor performs exactly one memory access, with the move
// instruction of its width (see bar_unsafe.go). It pins the assumption that a
// Go load or store of a uint8/16/32 through a pointer is one MOV of that width
// on amd64, and that nothing else in the accessor touches memory except the
// stack.
func TestMMIOAccessorsAreSingleMoves(t *testing.T) {
	if runtime.GOARCH != "amd64" {
		t.Skip("the single-instruction check is written for amd64")
	}
	if testing.Short() {
		t.Skip("compiles the package; skipped in -short mode")
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("needs the go tool to compile with -S: %v", err)
	}
	cmd := exec.Command(goTool, "build", "-gcflags=-S", "-o", os.DevNull, ".")
	cmd.Env = append(os.Environ(), "GOARCH=amd64", "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go build -gcflags=-S: %v\n%s", err, out)
	}
	want := map[string]string{
		"mmioRead8": "MOVBLZX", "mmioRead16": "MOVWLZX", "mmioRead32": "MOVL",
		"mmioWrite8": "MOVB", "mmioWrite16": "MOVW", "mmioWrite32": "MOVL",
	}
	// A memory operand that is not the stack, the arguments, a symbol or g
	// (R14); address arithmetic (LEA) and pseudo-instructions do not count.
	mem := regexp.MustCompile(`\([A-Z0-9]+\)`)
	notMem := regexp.MustCompile(`\((SP|FP|BP|SB|R14)\)`)
	notAccess := map[string]bool{"LEAQ": true, "LEAL": true, "TEXT": true, "FUNCDATA": true, "PCDATA": true, "CALL": true}
	insn := regexp.MustCompile(`^\s+0x[0-9a-f]+ \d+ \([^)]*\)\s+([A-Z0-9]+)\s*(.*)$`)
	got := map[string][]string{}
	fn := ""
	for _, line := range strings.Split(string(out), "\n") {
		if !strings.HasPrefix(line, "\t") && !strings.HasPrefix(line, " ") {
			fn = ""
			if m := regexp.MustCompile(`^\S+/uio\.(mmio\w+) STEXT`).FindStringSubmatch(line); m != nil {
				fn = m[1]
			}
			continue
		}
		if fn == "" {
			continue
		}
		m := insn.FindStringSubmatch(line)
		if m == nil || notAccess[m[1]] || !mem.MatchString(m[2]) || notMem.MatchString(m[2]) {
			continue
		}
		got[fn] = append(got[fn], m[1]+" "+m[2])
	}
	for fn, op := range want {
		accesses := got[fn]
		if len(accesses) != 1 || !strings.HasPrefix(accesses[0], op+" ") {
			t.Errorf("%s: memory accesses %q, want exactly one %s", fn, accesses, op)
		}
	}
}

func FuzzParseResources(f *testing.F) {
	f.Add(qemuResources)
	f.Add("0x0 0x0 0x0\n")
	f.Add("0x1000 0x1fff 0x200\n0xc000 0xc03f 0x101\n")
	f.Fuzz(func(t *testing.T, s string) {
		rs, err := parseResources(s)
		if err != nil {
			return
		}
		for _, r := range rs {
			if (r.IO() || r.Mem()) && (r.Size() == 0 || r.Start+r.Size()-1 != r.End) {
				t.Fatalf("%+v: size %d inconsistent", r, r.Size())
			}
		}
	})
}

func BenchmarkMemBARRead32(b *testing.B) {
	dir := b.TempDir()
	os.WriteFile(filepath.Join(dir, "resource4"), make([]byte, 0x4000), 0o600)
	rs, _ := parseResources(qemuResources)
	bar, err := openBAR(dir, 4, rs[4])
	if err != nil {
		b.Fatal(err)
	}
	defer bar.Close()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := bar.Read32(0x1000); err != nil {
			b.Fatal(err)
		}
	}
}
