package qemu

import (
	"context"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// QGAPackage is the Debian package of the QEMU guest agent that
// Options.QGA puts into the guest, unmodified.
const QGAPackage = "qemu-guest-agent"

// QGAPath is where qemu-ga lives in the guest (as in the package).
const QGAPath = "/usr/sbin/qemu-ga"

// QGA is Debian's qemu-guest-agent with the shared libraries it needs,
// unpacked in the cache (never installed on the host).
type QGA struct {
	// Version is the package version, e.g. "1:7.2+dfsg-7+deb12u18+b3".
	Version string
	// Packages are the packages unpacked into Root: qemu-guest-agent and
	// its Depends closure (the libraries come from the same archive as
	// the agent, whatever the host has installed).
	Packages []string
	// Root is the merged dpkg -x tree of Packages.
	Root string
}

// qgaDependsArgs make apt-cache list the Depends closure of a package: the
// run-time libraries, not the maintainer-script helpers (PreDepends:
// init-system-helpers) nor recommendations.
var qgaDependsArgs = []string{
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

// EnsureQGA returns the cached qemu-guest-agent tree, downloading and
// unpacking the package and its library closure on a cache miss (keyed by
// the agent's version). If apt cannot tell the version (offline), the
// newest cached tree is used.
func EnsureQGA(cache string) (*QGA, error) {
	base := filepath.Join(cache, "qga")
	version, verr := candidateVersion(QGAPackage)
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
	q := &QGA{Version: version, Root: filepath.Join(dir, "root")}
	done := filepath.Join(dir, "done")
	pkgList := filepath.Join(dir, "packages")
	load := func() (*QGA, error) {
		b, err := os.ReadFile(pkgList)
		if err != nil {
			return nil, err
		}
		q.Packages = strings.Fields(string(b))
		return q, nil
	}
	if _, err := os.Stat(done); err == nil {
		return load()
	}
	unlock, err := lockCache(base, "qga")
	if err != nil {
		return nil, err
	}
	defer unlock()
	if _, err := os.Stat(done); err == nil {
		return load()
	}
	if err := fetchQGA(q, dir); err != nil {
		return nil, fmt.Errorf("fetching %s %s: %w", QGAPackage, version, err)
	}
	if err := os.WriteFile(pkgList, []byte(strings.Join(q.Packages, "\n")+"\n"), 0o644); err != nil {
		return nil, err
	}
	// The closure must resolve before the tree counts as complete.
	if _, err := q.Files(); err != nil {
		return nil, err
	}
	return q, os.WriteFile(done, []byte(version+"\n"), 0o644)
}

func fetchQGA(q *QGA, dir string) error {
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	out, err := run("", "apt-cache", append(qgaDependsArgs, QGAPackage)...)
	if err != nil {
		return err
	}
	q.Packages = parseDependsClosure(string(out))
	if !slices.Contains(q.Packages, QGAPackage) {
		return fmt.Errorf("apt-cache depends --recurse %s: the package itself is not listed:\n%s", QGAPackage, out)
	}
	dl := filepath.Join(dir, "download")
	if err := os.MkdirAll(dl, 0o755); err != nil {
		return err
	}
	// apt-get download drops privileges to _apt, which may not be able to
	// write here; that only costs a warning.
	if _, err := run(dl, "apt-get", append([]string{"download", "-q"}, q.Packages...)...); err != nil {
		return err
	}
	for _, pkg := range q.Packages {
		debs, _ := filepath.Glob(filepath.Join(dl, pkg+"_*.deb"))
		if len(debs) != 1 {
			return fmt.Errorf("apt-get download %s: expected one .deb in %s, found %d", pkg, dl, len(debs))
		}
		if _, err := run("", "dpkg", "-x", debs[0], q.Root); err != nil {
			return err
		}
	}
	return os.RemoveAll(dl)
}

// Files are the initramfs files that run qemu-ga in the guest: the program
// at QGAPath, the loader and the shared libraries (ELFClosure).
func (q *QGA) Files() ([]File, error) {
	return ELFClosure(q.Root, QGAPath, DefaultLibDirs)
}

// QGAStateDir is where StartQGA has qemu-ga keep its state and pid file
// (the u-root guest has no /var/run).
const QGAStateDir = "/tmp"

// StartQGA starts the guest's qemu-ga (boot with Options.QGA) in the
// background, listening on the Unix socket sock in the guest
// (--method=unix-listen), and waits until the socket exists. Stop it with
// Proc.Signal(ctx, 15) and Proc.Wait; it removes its pid file on the way out.
func StartQGA(ctx context.Context, g *Guest, sock string, timeout time.Duration) (*Proc, error) {
	p, err := g.Start(ctx, QGAPath, "--method=unix-listen", "--path="+sock,
		"--statedir="+QGAStateDir, "--pidfile="+path.Join(QGAStateDir, "qemu-ga.pid"))
	if err != nil {
		return nil, err
	}
	if err := g.WaitPath(ctx, sock, timeout); err != nil {
		if p.Exited() {
			out, werr := p.Wait(ctx)
			return nil, fmt.Errorf("qemu-ga exited: %v: %s", werr, out)
		}
		return p, fmt.Errorf("qemu-ga: socket %s: %w", sock, err)
	}
	return p, nil
}
