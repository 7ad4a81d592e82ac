package qemu

import (
	"io"
	"os"
	"path"
	"slices"
	"strings"

	"github.com/u-root/u-root/pkg/cpio"
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

// firstIno numbers this archive's records above the base image's, so that
// no record of ours can be taken for a hard link to one of its files.
const firstIno = 1 << 20

// writeArchive writes files as a "newc" cpio archive (the format the
// kernel's initramfs unpacker reads) with u-root's pkg/cpio. An archive
// appended to another one adds its files to the same rootfs, which is how a
// boot extends the cached base image. Every missing parent directory gets
// a record (mode 0755) before its first child: the unpacker does not
// create parents itself. Records are in Dst order, so archives are
// reproducible; when two files have the same Dst the later one in files
// wins, as it would when unpacked.
func writeArchive(w io.Writer, files []File) error {
	rw := cpio.Newc.Writer(w)
	ino := uint64(firstIno)
	dirs := map[string]bool{}
	write := func(r cpio.Record, nlink uint64) error {
		ino++
		r.Ino, r.NLink = ino, nlink
		return rw.WriteRecord(r)
	}
	for _, f := range sortedFiles(files) {
		name := strings.TrimPrefix(path.Clean(f.Dst), "/")
		for _, d := range parents(name) {
			if dirs[d] {
				continue
			}
			dirs[d] = true
			if err := write(cpio.Directory(d, 0o755), 2); err != nil {
				return err
			}
		}
		var rec cpio.Record
		if f.Symlink != "" {
			rec = cpio.Symlink(name, f.Symlink)
		} else {
			data, mode, err := f.contents()
			if err != nil {
				return err
			}
			rec = cpio.StaticRecord(data, cpio.Info{Name: name, Mode: cpio.S_IFREG | uint64(mode&0o7777)})
		}
		if err := write(rec, 1); err != nil {
			return err
		}
	}
	return cpio.WriteTrailer(rw)
}

// contents is a regular file's bytes and permission bits.
func (f File) contents() ([]byte, uint32, error) {
	if f.Src == "" {
		return f.Data, orDefault(f.Mode, 0o644), nil
	}
	data, err := os.ReadFile(f.Src)
	return data, orDefault(f.Mode, 0o755), err
}

func orDefault(mode, def uint32) uint32 {
	if mode == 0 {
		return def
	}
	return mode
}

// parents lists the directories above name, outermost first ("a/b/c" gives
// "a", "a/b").
func parents(name string) []string {
	var ds []string
	for d := path.Dir(name); d != "." && d != "/"; d = path.Dir(d) {
		ds = append(ds, d)
	}
	slices.Reverse(ds)
	return ds
}

// sortedFiles orders files by destination, keeping only the last of files
// with the same destination.
func sortedFiles(files []File) []File {
	s := slices.Clone(files)
	for i := range s {
		s[i].Dst = path.Clean(s[i].Dst)
	}
	slices.SortStableFunc(s, func(a, b File) int { return strings.Compare(a.Dst, b.Dst) })
	out := s[:0]
	for i, f := range s {
		if i+1 < len(s) && s[i+1].Dst == f.Dst {
			continue
		}
		out = append(out, f)
	}
	return out
}
