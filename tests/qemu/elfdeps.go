package qemu

import (
	"bytes"
	"debug/elf"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
)

// A dynamically linked program carried into the guest needs its ELF
// interpreter (PT_INTERP) and every shared library its DT_NEEDED entries
// name, recursively. ELFClosure finds them in a directory tree laid out
// like the guest's root (a set of dpkg -x trees), the way the dynamic
// loader would find them with no ld.so.cache: in the default library
// directories, by file name. DT_RPATH and DT_RUNPATH are not followed (no
// Debian library in the closures the tests need uses them); a library that
// is missing is an error, never skipped.

// DefaultLibDirs are the guest directories searched for DT_NEEDED names, in
// the order Debian's x86-64 loader searches its built-in system path.
var DefaultLibDirs = []string{
	"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib",
}

// maxSymlinks bounds symlink resolution inside the root, as the kernel's
// 40 (MAXSYMLINKS).
const maxSymlinks = 40

// resolveInRoot follows symbolic links in the guest path p as the guest
// would, treating root as "/": absolute targets stay inside root. It
// returns the guest path of the final file.
func resolveInRoot(root, p string) (string, error) {
	if !path.IsAbs(p) {
		return "", fmt.Errorf("%s: not an absolute path", p)
	}
	done := "/"
	rest := strings.Split(strings.TrimPrefix(path.Clean(p), "/"), "/")
	links := 0
	for len(rest) > 0 {
		name := rest[0]
		rest = rest[1:]
		switch name {
		case "", ".":
			continue
		case "..":
			done = path.Dir(done)
			continue
		}
		next := path.Join(done, name)
		fi, err := os.Lstat(filepath.Join(root, filepath.FromSlash(next)))
		if err != nil {
			return "", err
		}
		if fi.Mode()&os.ModeSymlink == 0 {
			done = next
			continue
		}
		if links++; links > maxSymlinks {
			return "", fmt.Errorf("%s: too many levels of symbolic links", p)
		}
		target, err := os.Readlink(filepath.Join(root, filepath.FromSlash(next)))
		if err != nil {
			return "", err
		}
		if path.IsAbs(target) {
			done = "/"
		}
		rest = append(strings.Split(target, "/"), rest...)
	}
	return done, nil
}

// elfInfo is what the closure needs from one ELF file.
type elfInfo struct {
	class   elf.Class
	machine elf.Machine
	interp  string   // PT_INTERP, "" if none
	needed  []string // DT_NEEDED
}

func readELF(file string) (elfInfo, error) {
	f, err := elf.Open(file)
	if err != nil {
		return elfInfo{}, err
	}
	defer f.Close()
	info := elfInfo{class: f.Class, machine: f.Machine}
	for _, p := range f.Progs {
		if p.Type != elf.PT_INTERP {
			continue
		}
		b := make([]byte, p.Filesz)
		if _, err := p.ReadAt(b, 0); err != nil {
			return elfInfo{}, fmt.Errorf("%s: PT_INTERP: %w", file, err)
		}
		info.interp = string(bytes.TrimRight(b, "\x00"))
		if !path.IsAbs(info.interp) {
			return elfInfo{}, fmt.Errorf("%s: PT_INTERP %q is not an absolute path", file, info.interp)
		}
	}
	if info.needed, err = f.ImportedLibraries(); err != nil {
		return elfInfo{}, fmt.Errorf("%s: DT_NEEDED: %w", file, err)
	}
	for _, n := range info.needed {
		if n == "" || strings.Contains(n, "/") {
			return elfInfo{}, fmt.Errorf("%s: DT_NEEDED %q is not a plain file name", file, n)
		}
	}
	return info, nil
}

// ELFClosure returns the initramfs files that run the program at guest path
// prog from the tree root: the program, its interpreter and the shared
// libraries it needs, recursively, each found in libDirs (guest paths, in
// search order). Each file is placed at the guest path the loader opens
// (the library's DT_NEEDED name in the directory where it was found, the
// interpreter at its PT_INTERP path) with the contents of the file that
// path resolves to in root; a second path to the same file becomes a
// symbolic link to the first, so nothing is carried twice. Every library
// must have the program's ELF class and machine.
func ELFClosure(root, prog string, libDirs []string) ([]File, error) {
	var files []File
	placed := map[string]string{} // resolved guest path -> guest path holding its bytes
	place := func(guest string) (string, error) {
		real, err := resolveInRoot(root, guest)
		if err != nil {
			return "", err
		}
		if first, ok := placed[real]; ok {
			if first != guest {
				files = append(files, File{Dst: guest, Symlink: first})
			}
			return real, nil
		}
		placed[real] = guest
		files = append(files, File{Dst: guest, Src: filepath.Join(root, filepath.FromSlash(real)), Mode: 0o755})
		return real, nil
	}
	real, err := place(prog)
	if err != nil {
		return nil, fmt.Errorf("elf closure: program: %w", err)
	}
	top, err := readELF(filepath.Join(root, filepath.FromSlash(real)))
	if err != nil {
		return nil, fmt.Errorf("elf closure: %w", err)
	}
	if top.interp != "" {
		if _, err := place(top.interp); err != nil {
			return nil, fmt.Errorf("elf closure: %s: interpreter: %w", prog, err)
		}
	}
	type pending struct{ name, by string }
	queue := []pending{}
	for _, n := range top.needed {
		queue = append(queue, pending{n, prog})
	}
	found := map[string]bool{}
	var missing []string
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		if found[p.name] {
			continue
		}
		found[p.name] = true
		guest := ""
		for _, dir := range libDirs {
			cand := path.Join(dir, p.name)
			if _, err := resolveInRoot(root, cand); err == nil {
				guest = cand
				break
			}
		}
		if guest == "" {
			missing = append(missing, fmt.Sprintf("%s (needed by %s)", p.name, p.by))
			continue
		}
		real, err := place(guest)
		if err != nil {
			return nil, fmt.Errorf("elf closure: %s: %w", guest, err)
		}
		info, err := readELF(filepath.Join(root, filepath.FromSlash(real)))
		if err != nil {
			return nil, fmt.Errorf("elf closure: %w", err)
		}
		if info.class != top.class || info.machine != top.machine {
			return nil, fmt.Errorf("elf closure: %s is %v %v, %s is %v %v", guest, info.class, info.machine, prog, top.class, top.machine)
		}
		for _, n := range info.needed {
			queue = append(queue, pending{n, guest})
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		return nil, fmt.Errorf("elf closure of %s: not found in %s under %s: %s",
			prog, strings.Join(libDirs, ":"), root, strings.Join(missing, ", "))
	}
	return files, nil
}
