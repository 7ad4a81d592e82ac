package qemu

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// DebTree is a Debian package unpacked in the cache together with its
// Depends closure, for carrying an unmodified Debian program into the
// guest (qemu-ga, socat). Nothing is installed on the host, and the
// libraries come from the same archive as the program, whatever the host
// has installed.
type DebTree struct {
	// Version is the package's version, e.g. "1.7.4.4-2".
	Version string
	// Packages are the packages unpacked into Root: the package and its
	// Depends closure.
	Packages []string
	// Root is the merged dpkg -x tree of Packages.
	Root string
}

// dependsArgs make apt-cache list the Depends closure of a package: the
// run-time libraries, not the maintainer-script helpers (PreDepends:
// init-system-helpers) nor recommendations.
var dependsArgs = []string{
	"depends", "--recurse", "--no-recommends", "--no-suggests", "--no-conflicts",
	"--no-breaks", "--no-replaces", "--no-enhances", "--no-pre-depends",
}

// parseDependsClosure returns the real package names in the output of
// `apt-cache depends --recurse`: every unindented line names a package of
// the closure; virtual packages appear as <name> and have nothing to
// download.
func parseDependsClosure(out string) []string {
	var pkgs []string
	for line := range strings.Lines(out) {
		line = strings.TrimRight(line, "\r\n")
		if line == "" || line[0] == ' ' || line[0] == '\t' || line[0] == '|' || strings.HasPrefix(line, "<") {
			continue
		}
		if !slices.Contains(pkgs, line) {
			pkgs = append(pkgs, line)
		}
	}
	return pkgs
}

// candidateVersion asks apt for the version apt-get download would fetch.
func candidateVersion(pkg string) (string, error) {
	out, err := run("", "apt-cache", "show", "--no-all-versions", pkg)
	if err != nil {
		return "", err
	}
	for line := range strings.Lines(string(out)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "Version:"); ok {
			return strings.TrimSpace(v), nil
		}
	}
	return "", fmt.Errorf("apt-cache show %s: no Version field", pkg)
}

// EnsureDebTree returns the cached tree of pkg in cache/sub/VERSION,
// downloading and unpacking the package and its Depends closure on a
// cache miss (keyed by the package's version). The tree counts as
// complete only once the ELF closure of prog (a guest path in the
// package) resolves in it. If apt cannot tell the version (offline), the
// newest cached tree is used.
func EnsureDebTree(cache, sub, pkg, prog string) (*DebTree, error) {
	return ensureDebTree(cache, sub, pkg, prog, DefaultLibDirs)
}

// ensureDebTree is EnsureDebTree with the library directories prog's
// closure is resolved in (systemd keeps its own library in /lib/systemd).
func ensureDebTree(cache, sub, pkg, prog string, libDirs []string) (*DebTree, error) {
	base := filepath.Join(cache, sub)
	version, verr := candidateVersion(pkg)
	if verr != nil {
		cached, _ := filepath.Glob(filepath.Join(base, "*", "done"))
		if len(cached) == 0 {
			return nil, verr
		}
		slices.Sort(cached)
		b, err := os.ReadFile(cached[len(cached)-1])
		if err != nil {
			return nil, err
		}
		version = strings.TrimSpace(string(b))
	}
	// Version strings hold ':' (epoch) and '+', both fine in file names.
	dir := filepath.Join(base, version)
	t := &DebTree{Version: version, Root: filepath.Join(dir, "root")}
	done := filepath.Join(dir, "done")
	pkgList := filepath.Join(dir, "packages")
	load := func() (*DebTree, error) {
		b, err := os.ReadFile(pkgList)
		if err != nil {
			return nil, err
		}
		t.Packages = strings.Fields(string(b))
		return t, nil
	}
	if _, err := os.Stat(done); err == nil {
		return load()
	}
	unlock, err := lockCache(base, sub)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if _, err := os.Stat(done); err == nil {
		return load()
	}
	if err := t.fetch(pkg, dir); err != nil {
		return nil, fmt.Errorf("fetching %s %s: %w", pkg, version, err)
	}
	if err := os.WriteFile(pkgList, []byte(strings.Join(t.Packages, "\n")+"\n"), 0o644); err != nil {
		return nil, err
	}
	if _, err := ELFClosure(t.Root, prog, libDirs); err != nil {
		return nil, err
	}
	return t, os.WriteFile(done, []byte(version+"\n"), 0o644)
}

func (t *DebTree) fetch(pkg, dir string) error {
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	out, err := run("", "apt-cache", append(dependsArgs, pkg)...)
	if err != nil {
		return err
	}
	t.Packages = parseDependsClosure(string(out))
	if !slices.Contains(t.Packages, pkg) {
		return fmt.Errorf("apt-cache depends --recurse %s: the package itself is not listed:\n%s", pkg, out)
	}
	dl := filepath.Join(dir, "download")
	if err := os.MkdirAll(dl, 0o755); err != nil {
		return err
	}
	// apt-get download drops privileges to _apt, which may not be able to
	// write here; that only costs a warning.
	if _, err := run(dl, "apt-get", append([]string{"download", "-q"}, t.Packages...)...); err != nil {
		return err
	}
	for _, p := range t.Packages {
		debs, _ := filepath.Glob(filepath.Join(dl, p+"_*.deb"))
		if len(debs) != 1 {
			return fmt.Errorf("apt-get download %s: expected one .deb in %s, found %d", p, dl, len(debs))
		}
		if _, err := run("", "dpkg", "-x", debs[0], t.Root); err != nil {
			return err
		}
	}
	return os.RemoveAll(dl)
}
