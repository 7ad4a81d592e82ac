package qemu

import (
	"context"
	"fmt"
	"path"
	"time"
)

// QGAPackage is the Debian package of the QEMU guest agent that
// Options.QGA puts into the guest, unmodified.
const QGAPackage = "qemu-guest-agent"

// QGAPath is where qemu-ga lives in the guest (as in the package).
const QGAPath = "/usr/sbin/qemu-ga"

// QGA is Debian's qemu-guest-agent with the shared libraries it needs,
// unpacked in the cache (never installed on the host; see EnsureDebTree).
// Version is the package version, e.g. "1:7.2+dfsg-7+deb12u18+b3".
type QGA struct{ DebTree }

// EnsureQGA returns the cached qemu-guest-agent tree, downloading and
// unpacking the package and its library closure on a cache miss.
func EnsureQGA(cache string) (*QGA, error) {
	t, err := EnsureDebTree(cache, "qga", QGAPackage, QGAPath)
	if err != nil {
		return nil, err
	}
	return &QGA{*t}, nil
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
