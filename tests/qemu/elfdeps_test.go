package qemu

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// genELF describes a generated ELF file: real ELF64 headers, a PT_INTERP
// segment and a .dynamic section with DT_NEEDED entries, enough for
// debug/elf and for readELF (nothing in it is executable).
type genELF struct {
	machine elf.Machine
	interp  string
	needed  []string
}

func (e genELF) bytes(t testing.TB) []byte {
	t.Helper()
	le := binary.LittleEndian
	machine := e.machine
	if machine == 0 {
		machine = elf.EM_X86_64
	}
	// Section names and contents, laid out after the headers.
	var dynstr bytes.Buffer
	dynstr.WriteByte(0)
	var dyn []elf.Dyn64
	for _, n := range e.needed {
		dyn = append(dyn, elf.Dyn64{Tag: int64(elf.DT_NEEDED), Val: uint64(dynstr.Len())})
		dynstr.WriteString(n)
		dynstr.WriteByte(0)
	}
	dyn = append(dyn, elf.Dyn64{Tag: int64(elf.DT_NULL)})
	var dynamic bytes.Buffer
	for _, d := range dyn {
		binary.Write(&dynamic, le, d)
	}
	shstr := []byte("\x00.interp\x00.dynstr\x00.dynamic\x00.shstrtab\x00")
	nameOff := func(n string) uint32 { return uint32(bytes.Index(shstr, []byte("\x00"+n+"\x00")) + 1) }

	phnum := 0
	if e.interp != "" {
		phnum = 1
	}
	off := uint64(64 + 56*phnum)
	interpOff := off
	interp := []byte(e.interp + "\x00")
	if e.interp != "" {
		off += uint64(len(interp))
	}
	dynstrOff := off
	off += uint64(dynstr.Len())
	off = (off + 7) &^ 7
	dynamicOff := off
	off += uint64(dynamic.Len())
	shstrOff := off
	off += uint64(len(shstr))
	off = (off + 7) &^ 7
	shoff := off

	sections := []elf.Section64{{}} // index 0: SHN_UNDEF
	if e.interp != "" {
		sections = append(sections, elf.Section64{Name: nameOff(".interp"), Type: uint32(elf.SHT_PROGBITS), Flags: uint64(elf.SHF_ALLOC), Off: interpOff, Size: uint64(len(interp)), Addralign: 1})
	}
	dynstrIdx := uint32(len(sections))
	sections = append(sections,
		elf.Section64{Name: nameOff(".dynstr"), Type: uint32(elf.SHT_STRTAB), Flags: uint64(elf.SHF_ALLOC), Off: dynstrOff, Size: uint64(dynstr.Len()), Addralign: 1},
		elf.Section64{Name: nameOff(".dynamic"), Type: uint32(elf.SHT_DYNAMIC), Flags: uint64(elf.SHF_ALLOC | elf.SHF_WRITE), Off: dynamicOff, Size: uint64(dynamic.Len()), Link: dynstrIdx, Addralign: 8, Entsize: 16},
		elf.Section64{Name: nameOff(".shstrtab"), Type: uint32(elf.SHT_STRTAB), Off: shstrOff, Size: uint64(len(shstr)), Addralign: 1},
	)
	hdr := elf.Header64{
		Type: uint16(elf.ET_DYN), Machine: uint16(machine), Version: uint32(elf.EV_CURRENT),
		Ehsize: 64, Phentsize: 56, Phnum: uint16(phnum), Shoff: shoff, Shentsize: 64,
		Shnum: uint16(len(sections)), Shstrndx: uint16(len(sections) - 1),
	}
	if phnum > 0 {
		hdr.Phoff = 64
	}
	copy(hdr.Ident[:], elf.ELFMAG)
	hdr.Ident[elf.EI_CLASS] = byte(elf.ELFCLASS64)
	hdr.Ident[elf.EI_DATA] = byte(elf.ELFDATA2LSB)
	hdr.Ident[elf.EI_VERSION] = byte(elf.EV_CURRENT)

	var b bytes.Buffer
	binary.Write(&b, le, hdr)
	if e.interp != "" {
		binary.Write(&b, le, elf.Prog64{Type: uint32(elf.PT_INTERP), Flags: uint32(elf.PF_R), Off: interpOff, Filesz: uint64(len(interp)), Memsz: uint64(len(interp)), Align: 1})
		b.Write(interp)
	}
	b.Write(dynstr.Bytes())
	b.Write(make([]byte, int(dynamicOff)-b.Len()))
	b.Write(dynamic.Bytes())
	b.Write(shstr)
	b.Write(make([]byte, int(shoff)-b.Len()))
	for _, s := range sections {
		binary.Write(&b, le, s)
	}
	return b.Bytes()
}

// tree builds a root directory: entries map guest paths to a *genELF (a
// file), a string starting with "->" (a symlink to the rest) or any other
// string (a plain file with that content).
func tree(t testing.TB, entries map[string]any) string {
	t.Helper()
	root := t.TempDir()
	for p, v := range entries {
		host := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(host), 0o755); err != nil {
			t.Fatal(err)
		}
		var err error
		switch v := v.(type) {
		case genELF:
			err = os.WriteFile(host, v.bytes(t), 0o755)
		case string:
			if target, ok := strings.CutPrefix(v, "->"); ok {
				err = os.Symlink(target, host)
			} else {
				err = os.WriteFile(host, []byte(v), 0o644)
			}
		default:
			t.Fatalf("tree: %s: unknown entry %T", p, v)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestGenELFReadsBack(t *testing.T) {
	root := tree(t, map[string]any{"/p": genELF{interp: "/lib64/ld.so.2", needed: []string{"liba.so.1", "libb.so.2"}}})
	info, err := readELF(filepath.Join(root, "p"))
	if err != nil {
		t.Fatal(err)
	}
	if info.interp != "/lib64/ld.so.2" || !slices.Equal(info.needed, []string{"liba.so.1", "libb.so.2"}) ||
		info.class != elf.ELFCLASS64 || info.machine != elf.EM_X86_64 {
		t.Fatalf("readELF = %+v", info)
	}
}

// filesByDst renders a closure as "dst=contents-source" lines relative to
// root, for comparison.
func filesByDst(t testing.TB, root string, files []File) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, f := range files {
		if _, dup := m[f.Dst]; dup {
			t.Errorf("%s placed twice", f.Dst)
		}
		switch {
		case f.Symlink != "":
			m[f.Dst] = "symlink " + f.Symlink
		default:
			rel, err := filepath.Rel(root, f.Src)
			if err != nil || strings.HasPrefix(rel, "..") {
				t.Errorf("%s: source %s is outside the root %s", f.Dst, f.Src, root)
			}
			m[f.Dst] = "/" + filepath.ToSlash(rel)
		}
	}
	return m
}

func TestELFClosure(t *testing.T) {
	const lib, usrlib = "/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu"
	root := tree(t, map[string]any{
		"/usr/sbin/prog": genELF{interp: "/lib64/ld-linux-x86-64.so.2", needed: []string{"libglib.so.0", "libc.so.6"}},
		// Absolute symlink, as libc6 ships it: must resolve inside the root.
		"/lib64/ld-linux-x86-64.so.2":   "->" + lib + "/ld-linux-x86-64.so.2",
		lib + "/ld-linux-x86-64.so.2":   genELF{},
		lib + "/libc.so.6":              genELF{needed: []string{"ld-linux-x86-64.so.2"}},
		usrlib + "/libglib.so.0":        "->libglib.so.0.7400.6",
		usrlib + "/libglib.so.0.7400.6": genELF{needed: []string{"libpcre.so.0", "libc.so.6"}},
		// Found in the first directory of the search order, not the second.
		lib + "/libpcre.so.0":    genELF{needed: []string{"libglib.so.0"}}, // a cycle
		usrlib + "/libpcre.so.0": "not an ELF file: must not be read",
		// Not needed: must not be carried.
		lib + "/libunused.so.1": genELF{},
	})
	files, err := ELFClosure(root, "/usr/sbin/prog", DefaultLibDirs)
	if err != nil {
		t.Fatal(err)
	}
	got := filesByDst(t, root, files)
	want := map[string]string{
		"/usr/sbin/prog":              "/usr/sbin/prog",
		"/lib64/ld-linux-x86-64.so.2": lib + "/ld-linux-x86-64.so.2",
		usrlib + "/libglib.so.0":      usrlib + "/libglib.so.0.7400.6",
		lib + "/libc.so.6":            lib + "/libc.so.6",
		lib + "/libpcre.so.0":         lib + "/libpcre.so.0",
		// The loader as libc's DT_NEEDED: the same file as the
		// interpreter, carried once.
		lib + "/ld-linux-x86-64.so.2": "symlink /lib64/ld-linux-x86-64.so.2",
	}
	for dst, w := range want {
		if got[dst] != w {
			t.Errorf("%s: got %q, want %q", dst, got[dst], w)
		}
	}
	for dst, g := range got {
		if _, ok := want[dst]; !ok {
			t.Errorf("unexpected file %s (%s)", dst, g)
		}
	}
}

func TestELFClosureMissingLibrary(t *testing.T) {
	root := tree(t, map[string]any{
		"/bin/prog":                       genELF{needed: []string{"libc.so.6", "libgone.so.1"}},
		"/lib/x86_64-linux-gnu/libc.so.6": genELF{needed: []string{"libalsogone.so.2"}},
		// A dangling symlink is as good as missing.
		"/usr/lib/libgone.so.1": "->libgone.so.1.0",
	})
	_, err := ELFClosure(root, "/bin/prog", DefaultLibDirs)
	if err == nil {
		t.Fatal("closure with missing libraries succeeded")
	}
	for _, want := range []string{"libgone.so.1 (needed by /bin/prog)", "libalsogone.so.2 (needed by /lib/x86_64-linux-gnu/libc.so.6)"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
}

func TestELFClosureMissingInterpreter(t *testing.T) {
	root := tree(t, map[string]any{"/bin/prog": genELF{interp: "/lib64/ld-linux-x86-64.so.2"}})
	_, err := ELFClosure(root, "/bin/prog", DefaultLibDirs)
	if err == nil || !strings.Contains(err.Error(), "interpreter") {
		t.Fatalf("missing interpreter: err = %v", err)
	}
}

func TestELFClosureWrongMachine(t *testing.T) {
	root := tree(t, map[string]any{
		"/bin/prog":            genELF{needed: []string{"libarm.so.1"}},
		"/usr/lib/libarm.so.1": genELF{machine: elf.EM_AARCH64},
	})
	_, err := ELFClosure(root, "/bin/prog", DefaultLibDirs)
	if err == nil || !strings.Contains(err.Error(), "EM_AARCH64") {
		t.Fatalf("library of another machine: err = %v", err)
	}
}

func TestELFClosureNotELF(t *testing.T) {
	root := tree(t, map[string]any{
		"/bin/prog":         genELF{needed: []string{"libtext.so.1"}},
		"/lib/libtext.so.1": "INPUT(-lc)\n", // a linker script, not a library
	})
	if _, err := ELFClosure(root, "/bin/prog", DefaultLibDirs); err == nil {
		t.Fatal("a text file accepted as a shared library")
	}
}

func TestResolveInRoot(t *testing.T) {
	root := tree(t, map[string]any{
		"/etc/hostname":  "guest",
		"/a/abs":         "->/etc/hostname",
		"/a/rel":         "->../etc/hostname",
		"/a/escape":      "->../../../../../etc/hostname", // .. stops at the root
		"/a/dir":         "->/etc",
		"/a/loop1":       "->loop2",
		"/a/loop2":       "->loop1",
		"/a/dangling":    "->nothing",
		"/a/chain":       "->abs",
		"/a/through/dot": "->./../rel",
	})
	for _, c := range []struct{ in, want string }{
		{"/etc/hostname", "/etc/hostname"},
		{"/a/abs", "/etc/hostname"},
		{"/a/rel", "/etc/hostname"},
		{"/a/escape", "/etc/hostname"},
		{"/a/dir/hostname", "/etc/hostname"},
		{"/a/chain", "/etc/hostname"},
		{"/a/through/dot", "/etc/hostname"},
		{"/a/../etc/./hostname", "/etc/hostname"},
	} {
		got, err := resolveInRoot(root, c.in)
		if err != nil || got != c.want {
			t.Errorf("resolveInRoot(%s) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
	for _, bad := range []string{"/a/loop1", "/a/dangling", "/missing", "relative/path"} {
		if got, err := resolveInRoot(root, bad); err == nil {
			t.Errorf("resolveInRoot(%s) = %q, want an error", bad, got)
		}
	}
}

// TestELFClosureHostProgram resolves a real dynamically linked program of
// the host (Debian 12 on CI), with the host's root as the tree: its loader
// and libc must be found.
func TestELFClosureHostProgram(t *testing.T) {
	const prog = "/bin/sh"
	info, err := readELF(prog)
	if err != nil || info.interp == "" {
		t.Skipf("%s is not a dynamically linked ELF program here (%v); this check needs a glibc host such as Debian", prog, err)
	}
	files, err := ELFClosure("/", prog, DefaultLibDirs)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range files {
		names = append(names, filepath.Base(f.Dst))
	}
	for _, want := range []string{filepath.Base(info.interp), "libc.so.6"} {
		if !slices.Contains(names, want) {
			t.Errorf("closure of %s lacks %s: %v", prog, want, names)
		}
	}
}

func TestParseDependsClosure(t *testing.T) {
	out := `qemu-guest-agent
  Depends: libc6
  Depends: libglib2.0-0
 |Depends: libfoo1
  Depends: <libvirtual>
libc6
  Depends: libgcc-s1
libglib2.0-0
  Depends: libc6
<libvirtual>
libgcc-s1
libc6
`
	got := parseDependsClosure(out)
	want := []string{"qemu-guest-agent", "libc6", "libglib2.0-0", "libgcc-s1"}
	if !slices.Equal(got, want) {
		t.Fatalf("parseDependsClosure = %q, want %q", got, want)
	}
}
