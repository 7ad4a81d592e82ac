package qemu

// SocatPackage is the Debian package that Options.Socat puts into the
// guest, unmodified: the relay people put in front of the in-kernel
// driver's /dev/vportNpM to get a Unix socket, which the benchmark
// compares vserial-agent with.
const SocatPackage = "socat"

// SocatPath is where socat lives in the guest (as in the package).
const SocatPath = "/usr/bin/socat"

// socatFiles are the initramfs files that run socat in the guest: the
// program, its loader and its shared libraries (glibc, OpenSSL, libwrap
// and theirs), from the cached Debian tree (EnsureDebTree).
func socatFiles(cache string) ([]File, error) {
	t, err := EnsureDebTree(cache, "socat", SocatPackage, SocatPath)
	if err != nil {
		return nil, err
	}
	return ELFClosure(t.Root, SocatPath, DefaultLibDirs)
}
