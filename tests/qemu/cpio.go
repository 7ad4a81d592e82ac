package qemu

import (
	"fmt"
	"io"
	"path"
	"slices"
	"strings"
)

// File is one file placed in the guest's initramfs for a boot.
type File struct {
	// Dst is the absolute path in the guest.
	Dst string
	// Src is a host file to copy; Data is used when Src is empty.
	Src  string
	Data []byte
	// Mode is the permission bits; 0 means 0o755 for Src and 0o644 for Data.
	Mode uint32
	// Symlink, when set, makes Dst a symbolic link to it (Src, Data and
	// Mode are ignored).
	Symlink string
}

// newcWriter writes an archive in the "newc" cpio format that the kernel's
// initramfs unpacker reads (Linux Documentation/driver-api/early-userspace/
// buffer-format.rst). An archive appended to another one adds its files to
// the same rootfs, which is how a boot extends the cached base image.
type newcWriter struct {
	w    io.Writer
	ino  uint32
	dirs map[string]bool
	err  error
}

const (
	cpioModeDir     = 0o040000
	cpioModeFile    = 0o100000
	cpioModeSymlink = 0o120000
)

func newNewcWriter(w io.Writer) *newcWriter {
	return &newcWriter{w: w, ino: 1 << 20, dirs: map[string]bool{".": true, "/": true, "": true}}
}

func (c *newcWriter) record(name string, mode uint32, data []byte) {
	if c.err != nil {
		return
	}
	c.ino++
	nlink := 1
	if mode&cpioModeDir != 0 {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		c.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(name)+1, 0)
	buf := make([]byte, 0, len(hdr)+len(name)+8+len(data)+4)
	buf = append(buf, hdr...)
	buf = append(buf, name...)
	buf = append(buf, 0)
	buf = pad4(buf)
	buf = append(buf, data...)
	buf = pad4(buf)
	_, c.err = c.w.Write(buf)
}

func pad4(b []byte) []byte {
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// mkdirAll adds directory records for every missing parent of dir: the
// unpacker does not create parents itself.
func (c *newcWriter) mkdirAll(dir string) {
	if c.dirs[dir] {
		return
	}
	c.mkdirAll(path.Dir(dir))
	c.dirs[dir] = true
	c.record(dir, cpioModeDir|0o755, nil)
}

// addFile adds a regular file at the absolute guest path dst.
func (c *newcWriter) addFile(dst string, mode uint32, data []byte) {
	name := strings.TrimPrefix(path.Clean(dst), "/")
	c.mkdirAll(path.Dir(name))
	c.record(name, cpioModeFile|mode&0o7777, data)
}

// addSymlink adds a symbolic link at dst pointing to target.
func (c *newcWriter) addSymlink(dst, target string) {
	name := strings.TrimPrefix(path.Clean(dst), "/")
	c.mkdirAll(path.Dir(name))
	c.record(name, cpioModeSymlink|0o777, []byte(target))
}

// close writes the trailer.
func (c *newcWriter) close() error {
	c.record("TRAILER!!!", 0, nil)
	return c.err
}

// sortedFiles orders files by destination so that archives are reproducible.
func sortedFiles(files []File) []File {
	s := slices.Clone(files)
	slices.SortStableFunc(s, func(a, b File) int { return strings.Compare(a.Dst, b.Dst) })
	return s
}
