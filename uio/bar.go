package uio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/vserial/vserial/internal/rawio"
)

// BAR is one base address region of the function. It implements
// driver.BAR: every call is exactly one device access of the named width at
// off, which must be aligned to the width and inside the region. Values are
// little-endian as on the PCI bus.
//
// A BAR must not be used after the Function is closed; an access that
// happens after Close returns ErrClosed, but one that races with Close is a
// caller bug (the mapping may vanish under it).
type BAR struct {
	index  int
	res    Resource
	size   uint64
	mem    []byte // mapped BAR: the mapping of resourceN or the VFIO region (page-rounded)
	iofd   int    // BAR accessed by pread/pwrite: its descriptor, -1 for mapped BARs
	ioBase int64  // offset of the BAR in iofd (VFIO: the region offset; uio: 0)
	ownFD  bool   // close iofd on close (uio's resourceN; not the shared VFIO device fd)
	closed atomic.Bool
	gone   atomic.Bool // an access to the mapping faulted: the function was removed
}

// openBAR maps or opens dir/resourceN according to res.
func openBAR(dir string, i int, res Resource) (*BAR, error) {
	path := filepath.Join(dir, fmt.Sprintf("resource%d", i))
	b := &BAR{index: i, res: res, size: res.Size(), iofd: -1}
	switch {
	case res.Mem():
		fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, &os.PathError{Op: "open", Path: path, Err: err}
		}
		// The mapping keeps the resource alive; the descriptor is not needed.
		defer unix.Close(fd)
		page := uint64(os.Getpagesize())
		n := (b.size + page - 1) &^ (page - 1)
		if n > uint64(^uint(0)>>1) {
			return nil, fmt.Errorf("%s: %d bytes: too large to map", path, b.size)
		}
		// resourceN (not resourceN_wc) is mapped uncached by the kernel
		// (pci_mmap_resource_range with write_combine = 0): virtio
		// registers have side effects and must not be combined.
		m, err := unix.Mmap(fd, 0, int(n), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			return nil, &os.PathError{Op: "mmap", Path: path, Err: err}
		}
		b.mem = m
	case res.IO():
		fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, &os.PathError{Op: "open", Path: path, Err: err}
		}
		b.iofd, b.ownFD = fd, true
	default:
		return nil, ErrNoBAR
	}
	return b, nil
}

// Len is the size of the region in bytes.
func (b *BAR) Len() uint64 { return b.size }

// IO reports a BAR accessed by pread/pwrite (an I/O-port BAR, each access
// one in/out; through VFIO also a memory BAR that may not be mapped).
func (b *BAR) IO() bool { return b.iofd >= 0 }

// Resource returns the sysfs description of the BAR.
func (b *BAR) Resource() Resource { return b.res }

func (b *BAR) check(off, width uint64) error {
	if b.closed.Load() {
		return fmt.Errorf("uio: bar %d: %w", b.index, ErrClosed)
	}
	if b.gone.Load() {
		return fmt.Errorf("uio: bar %d: %w", b.index, ErrGone)
	}
	if off%width != 0 || b.size < width || off > b.size-width {
		return fmt.Errorf("uio: bar %d: %w: %d bytes at %#x (region is %#x bytes)", b.index, ErrBadAccess, width, off, b.size)
	}
	return nil
}

// Read8 reads one byte at off.
func (b *BAR) Read8(off uint64) (uint8, error) {
	if err := b.check(off, 1); err != nil {
		return 0, err
	}
	if b.mem != nil {
		v, err := b.readMem(off, 1)
		return uint8(v), err
	}
	var p [1]byte
	err := b.pread(p[:], off)
	return p[0], err
}

// Read16 reads a 16-bit value at off.
func (b *BAR) Read16(off uint64) (uint16, error) {
	if err := b.check(off, 2); err != nil {
		return 0, err
	}
	if b.mem != nil {
		v, err := b.readMem(off, 2)
		return uint16(v), err
	}
	var p [2]byte
	err := b.pread(p[:], off)
	return binary.NativeEndian.Uint16(p[:]), err
}

// Read32 reads a 32-bit value at off.
func (b *BAR) Read32(off uint64) (uint32, error) {
	if err := b.check(off, 4); err != nil {
		return 0, err
	}
	if b.mem != nil {
		v, err := b.readMem(off, 4)
		return uint32(v), err
	}
	var p [4]byte
	err := b.pread(p[:], off)
	return binary.NativeEndian.Uint32(p[:]), err
}

// Write8 writes one byte at off.
func (b *BAR) Write8(off uint64, v uint8) error {
	if err := b.check(off, 1); err != nil {
		return err
	}
	if b.mem != nil {
		return b.writeMem(off, 1, uint32(v))
	}
	return b.pwrite([]byte{v}, off)
}

// Write16 writes a 16-bit value at off.
func (b *BAR) Write16(off uint64, v uint16) error {
	if err := b.check(off, 2); err != nil {
		return err
	}
	if b.mem != nil {
		return b.writeMem(off, 2, uint32(v))
	}
	var p [2]byte
	binary.NativeEndian.PutUint16(p[:], v)
	return b.pwrite(p[:], off)
}

// Write32 writes a 32-bit value at off.
func (b *BAR) Write32(off uint64, v uint32) error {
	if err := b.check(off, 4); err != nil {
		return err
	}
	if b.mem != nil {
		return b.writeMem(off, 4, uint32(v))
	}
	var p [4]byte
	binary.NativeEndian.PutUint32(p[:], v)
	return b.pwrite(p[:], off)
}

// A function that is hot-unplugged (or whose sysfs resource file goes)
// takes its mapping with it: the kernel revokes the pages, and the next
// access is a SIGBUS, which would kill a Go program on the spot. Each
// access to the mapping therefore runs with debug.SetPanicOnFault, and a
// fault becomes ErrGone for this access and every later one; the driver
// then stops the device like any other transport failure.

// readMem is one load of width bytes at off from the mapping.
func (b *BAR) readMem(off uint64, width int) (v uint32, err error) {
	defer b.faulted(debug.SetPanicOnFault(true), off, &err)
	switch width {
	case 1:
		v = uint32(mmioRead8(b.mem, off))
	case 2:
		v = uint32(mmioRead16(b.mem, off))
	default:
		v = mmioRead32(b.mem, off)
	}
	return v, nil
}

// writeMem is one store of width bytes at off to the mapping.
func (b *BAR) writeMem(off uint64, width int, v uint32) (err error) {
	defer b.faulted(debug.SetPanicOnFault(true), off, &err)
	switch width {
	case 1:
		mmioWrite8(b.mem, off, uint8(v))
	case 2:
		mmioWrite16(b.mem, off, uint16(v))
	default:
		mmioWrite32(b.mem, off, v)
	}
	return nil
}

// faulted is deferred by readMem and writeMem: it restores the goroutine's
// fault setting and turns a memory fault into ErrGone. Any other panic
// goes on.
func (b *BAR) faulted(old bool, off uint64, err *error) {
	debug.SetPanicOnFault(old)
	r := recover()
	if r == nil {
		return
	}
	if _, ok := r.(interface{ Addr() uintptr }); !ok {
		panic(r)
	}
	b.gone.Store(true)
	*err = fmt.Errorf("uio: bar %d: access at %#x faulted: %w", b.index, off, ErrGone)
}

// pread is one pread(2) of exactly len(p) bytes: the kernel's
// pci_read_resource_io (uio) and vfio_pci_core_do_io_rw (VFIO) do one
// inb/inw/inl or ioread8/16/32 for an aligned 1/2/4-byte access. The
// kernel stores the value in CPU byte order, hence NativeEndian above.
func (b *BAR) pread(p []byte, off uint64) error {
	n, e := rawio.Pread(b.iofd, p, b.ioBase+int64(off))
	err := rawio.Err(e)
	if err == nil && n != len(p) {
		err = fmt.Errorf("short read: %d of %d bytes", n, len(p))
	}
	if err != nil {
		return fmt.Errorf("uio: bar %d: read %d bytes at %#x: %w", b.index, len(p), off, err)
	}
	return nil
}

func (b *BAR) pwrite(p []byte, off uint64) error {
	n, e := rawio.Pwrite(b.iofd, p, b.ioBase+int64(off))
	err := rawio.Err(e)
	if err == nil && n != len(p) {
		err = fmt.Errorf("short write: %d of %d bytes", n, len(p))
	}
	if err != nil {
		return fmt.Errorf("uio: bar %d: write %d bytes at %#x: %w", b.index, len(p), off, err)
	}
	return nil
}

// MappedBAR makes BAR i of a function from mem, a shared mapping of the
// region (page-rounded) that the BAR unmaps on Close. It is for another
// binding (package vfio) that mapped the region itself.
func MappedBAR(i int, res Resource, size uint64, mem []byte) *BAR {
	return &BAR{index: i, res: res, size: size, mem: mem, iofd: -1}
}

// FileBAR makes BAR i of a function accessed with width-exact pread and
// pwrite at base+off on fd, which stays the caller's: Close does not close
// it. It is for another binding (package vfio: the device fd).
func FileBAR(i int, res Resource, size uint64, fd int, base int64) *BAR {
	return &BAR{index: i, res: res, size: size, iofd: fd, ioBase: base}
}

// Close unmaps the BAR or closes the descriptor it owns. Later accesses
// return ErrClosed. The function's Close calls it; it is idempotent.
func (b *BAR) Close() error {
	if b.closed.Swap(true) {
		return nil
	}
	if b.mem != nil {
		m := b.mem
		b.mem = nil
		return unix.Munmap(m)
	}
	if b.iofd >= 0 && b.ownFD {
		return unix.Close(b.iofd)
	}
	return nil
}

// BARs are the six BARs of a function, each opened at its first use. The
// function's lock guards them.
type BARs [6]*BAR

// Get returns BAR i, opening it with open first if needed; errors are
// OpErrors "bar I" for the function at addr.
func (t *BARs) Get(closed bool, addr string, i int, open func() (*BAR, error)) (*BAR, error) {
	op := fmt.Sprintf("bar %d", i)
	if closed {
		return nil, &OpError{Op: op, Addr: addr, Err: ErrClosed}
	}
	if i < 0 || i >= len(t) {
		return nil, &OpError{Op: op, Addr: addr, Err: fmt.Errorf("%w: index out of range", ErrNoBAR)}
	}
	if t[i] != nil {
		return t[i], nil
	}
	b, err := open()
	if err != nil {
		return nil, &OpError{Op: op, Addr: addr, Err: err}
	}
	t[i] = b
	return b, nil
}

// Close closes every BAR opened and forgets it.
func (t *BARs) Close() error {
	var errs []error
	for i, b := range t {
		if b != nil {
			errs = append(errs, b.Close())
			t[i] = nil
		}
	}
	return errors.Join(errs...)
}
