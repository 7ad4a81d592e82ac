package uio

import (
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

const testAddr = "0000:00:03.0"

type fakeFn struct {
	sysfs, dev, dir string
	src             *fakeSource
	opts            Options
}

// newFakeFn builds what Open looks at for a transitional virtio-serial
// function bound to uio_pci_generic: the sysfs function directory (config,
// resource, resource0, resource4, uio/uio0, driver link), /dev/uio0 as a FIFO
// (pollable, like the real node), and a plain cpuinfo.
func newFakeFn(t *testing.T) *fakeFn {
	t.Helper()
	root := t.TempDir()
	ff := &fakeFn{sysfs: filepath.Join(root, "sys"), dev: filepath.Join(root, "dev")}
	ff.dir = filepath.Join(ff.sysfs, "bus", "pci", "devices", testAddr)
	for _, d := range []string{filepath.Join(ff.dir, "uio", "uio0"), ff.dev, filepath.Join(ff.sysfs, "bus", "pci", "drivers", "uio_pci_generic")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cfg := make([]byte, 256)
	cfg[0], cfg[1], cfg[2], cfg[3] = 0xf4, 0x1a, 0x03, 0x10
	cfg[4], cfg[5] = 0x03, 0x04 // decoding on, INTx disabled (left from an earlier run)
	cfg[6], cfg[7] = 0x10, 0x00
	files := map[string][]byte{
		"config": cfg, "resource": []byte(qemuResources),
		"resource0": make([]byte, 0x40), "resource4": make([]byte, 0x4000),
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(ff.dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("../../../bus/pci/drivers/uio_pci_generic", filepath.Join(ff.dir, "driver")); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(filepath.Join(ff.dev, "uio0"), 0o600); err != nil {
		t.Fatal(err)
	}
	ci := filepath.Join(root, "cpuinfo")
	if err := os.WriteFile(ci, []byte("processor\t: 0\nflags\t\t: fpu hypervisor\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ff.src = newFakeSource(huge, 4)
	ff.opts = Options{CPUInfo: ci, source: ff.src, Logger: quiet}
	return ff
}

func (ff *fakeFn) command(t *testing.T) uint16 {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(ff.dir, "config"))
	if err != nil {
		t.Fatal(err)
	}
	return binary.LittleEndian.Uint16(b[4:])
}

// fire plays uio_pci_generic's interrupt handler: mask INTx in the command
// register and make /dev/uio0 readable with the new count.
func (ff *fakeFn) fire(t *testing.T, count uint32) {
	t.Helper()
	cf, err := os.OpenFile(filepath.Join(ff.dir, "config"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	var hi [1]byte
	cf.ReadAt(hi[:], 5)
	cf.WriteAt([]byte{hi[0] | 0x04}, 5)
	cf.Close()
	w, err := os.OpenFile(filepath.Join(ff.dev, "uio0"), os.O_WRONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], count)
	if _, err := w.Write(b[:]); err != nil {
		t.Fatal(err)
	}
}

func openFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("cannot count descriptors: %v", err)
	}
	return len(ents)
}

func TestOpenFakeFunction(t *testing.T) {
	ff := newFakeFn(t)
	fds := openFDs(t)
	f, err := Open(ff.sysfs, ff.dev, testAddr, ff.opts)
	if err != nil {
		t.Fatal(err)
	}
	if got := ff.command(t); got != 0x0007 {
		t.Errorf("command after Open = %#04x, want 0x0007 (decoding + Bus Master, INTx enabled)", got)
	}
	if f.IOMMU() || f.IRQ().MSIXVectors() != 0 || f.Addr() != testAddr {
		t.Errorf("IOMMU %v, MSIXVectors %d, Addr %q", f.IOMMU(), f.IRQ().MSIXVectors(), f.Addr())
	}

	// Config space.
	var id [4]byte
	if _, err := f.Config().ReadAt(id[:], 0); err != nil || binary.LittleEndian.Uint32(id[:]) != 0x10031af4 {
		t.Errorf("vendor/device = % x, %v", id, err)
	}

	// BARs: BAR4 memory, BAR0 I/O, BAR2 and BAR5 (upper half of BAR4) absent.
	b4, err := f.BAR(4)
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := f.BAR(4); again != b4 {
		t.Error("BAR(4) mapped twice")
	}
	if err := b4.Write16(0x3002, 0xbeef); err != nil {
		t.Fatal(err)
	}
	if v, err := b4.Read16(0x3002); err != nil || v != 0xbeef {
		t.Errorf("BAR4 Read16 = %#x, %v", v, err)
	}
	b0, err := f.BAR(0)
	if err != nil || !b0.IO() || b0.Len() != 0x40 {
		t.Fatalf("BAR(0) = %v, %v", b0, err)
	}
	for _, i := range []int{2, 5, 6, -1} {
		if _, err := f.BAR(i); !errors.Is(err, ErrNoBAR) {
			t.Errorf("BAR(%d) = %v, want ErrNoBAR", i, err)
		}
	}

	// Interrupt: wait, service, unmask.
	done := make(chan error)
	go func() { done <- f.IRQ().Wait(context.Background()) }()
	ff.fire(t, 1)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := ff.command(t); got&0x0400 == 0 {
		t.Fatalf("fake kernel did not mask: %#04x", got)
	}
	if err := f.IRQ().Unmask(); err != nil {
		t.Fatal(err)
	}
	if got := ff.command(t); got != 0x0007 {
		t.Errorf("command after Unmask = %#04x, want 0x0007", got)
	}

	// DMA memory comes from the page source.
	r, err := f.DMA().Alloc(4096, 4096)
	if err != nil || r.Addr()%4096 != 0 {
		t.Fatalf("Alloc = %#x, %v", r.Addr(), err)
	}

	// Close: Bus Master off, Wait unblocked with ErrClosed, everything released.
	go func() { done <- f.IRQ().Wait(context.Background()) }()
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, os.ErrClosed) {
		t.Errorf("Wait across Close = %v, want os.ErrClosed", err)
	}
	if got := ff.command(t); got&0x0004 != 0 {
		t.Errorf("command after Close = %#04x: Bus Master still set", got)
	}
	if err := f.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
	if _, err := b4.Read32(0); !errors.Is(err, ErrClosed) {
		t.Errorf("BAR read after Close = %v, want ErrClosed", err)
	}
	if _, err := f.BAR(4); !errors.Is(err, ErrClosed) {
		t.Errorf("BAR(4) after Close = %v, want ErrClosed", err)
	}
	if len(ff.src.out) != 0 {
		t.Errorf("%d DMA chunks still mapped after Close", len(ff.src.out))
	}
	if n := openFDs(t); n != fds {
		t.Errorf("%d descriptors open after Close, %d before Open", n, fds)
	}
}

func TestOpenErrors(t *testing.T) {
	t.Run("not bound", func(t *testing.T) {
		ff := newFakeFn(t)
		os.RemoveAll(filepath.Join(ff.dir, "uio"))
		os.Remove(filepath.Join(ff.dir, "driver"))
		os.Symlink("../../../bus/pci/drivers/virtio-pci", filepath.Join(ff.dir, "driver"))
		_, err := Open(ff.sysfs, ff.dev, testAddr, ff.opts)
		if !errors.Is(err, ErrNotBound) || !strings.Contains(err.Error(), "held by virtio-pci") {
			t.Fatalf("Open = %v, want ErrNotBound held by virtio-pci", err)
		}
		if !strings.HasPrefix(err.Error(), "uio: open 0000:00:03.0: ") {
			t.Errorf("error %q lacks the op prefix", err)
		}
	})
	t.Run("two uio nodes", func(t *testing.T) {
		ff := newFakeFn(t)
		os.Mkdir(filepath.Join(ff.dir, "uio", "uio7"), 0o755)
		if _, err := Open(ff.sysfs, ff.dev, testAddr, ff.opts); !errors.Is(err, ErrNotBound) {
			t.Fatalf("Open = %v, want ErrNotBound", err)
		}
	})
	t.Run("no device", func(t *testing.T) {
		ff := newFakeFn(t)
		if _, err := Open(ff.sysfs, ff.dev, "0000:00:04.0", ff.opts); !errors.Is(err, ErrNoDevice) {
			t.Fatalf("Open = %v, want ErrNoDevice", err)
		}
	})
	t.Run("bad address", func(t *testing.T) {
		ff := newFakeFn(t)
		for _, a := range []string{"../../../../etc", "0000:00:03.0/..", "00:03.0", ""} {
			if _, err := Open(ff.sysfs, ff.dev, a, ff.opts); err == nil || !strings.Contains(err.Error(), "malformed") {
				t.Errorf("Open(%q) = %v", a, err)
			}
		}
	})
	t.Run("confidential", func(t *testing.T) {
		ff := newFakeFn(t)
		os.WriteFile(ff.opts.CPUInfo, []byte("flags\t: hypervisor sev sev_es sev_snp\n"), 0o644)
		_, err := Open(ff.sysfs, ff.dev, testAddr, ff.opts)
		if !errors.Is(err, ErrConfidential) || !strings.Contains(err.Error(), "SEV-SNP") {
			t.Fatalf("Open = %v, want ErrConfidential naming SEV-SNP", err)
		}
		ff.opts.IgnoreConfidential = true
		f, err := Open(ff.sysfs, ff.dev, testAddr, ff.opts)
		if err != nil {
			t.Fatalf("Open with IgnoreConfidential = %v", err)
		}
		f.Close()
	})
	t.Run("no dma memory releases everything", func(t *testing.T) {
		ff := newFakeFn(t)
		ff.src.limit = 0
		fds := openFDs(t)
		_, err := Open(ff.sysfs, ff.dev, testAddr, ff.opts)
		if !errors.Is(err, ErrNoHugepages) || !strings.Contains(err.Error(), "dma memory") {
			t.Fatalf("Open = %v, want ErrNoHugepages", err)
		}
		if n := openFDs(t); n != fds {
			t.Errorf("failed Open leaked descriptors: %d, before %d", n, fds)
		}
	})
	t.Run("no device node", func(t *testing.T) {
		ff := newFakeFn(t)
		os.Remove(filepath.Join(ff.dev, "uio0"))
		os.WriteFile(filepath.Join(ff.dir, "uio", "uio0", "dev"), []byte("245:0\n"), 0o644)
		_, err := Open(ff.sysfs, ff.dev, testAddr, ff.opts)
		if err == nil || !strings.Contains(err.Error(), "devtmpfs") || !strings.Contains(err.Error(), `"245:0"`) {
			t.Fatalf("Open = %v, want a hint with the device number", err)
		}
	})
	t.Run("malformed resource file", func(t *testing.T) {
		ff := newFakeFn(t)
		os.WriteFile(filepath.Join(ff.dir, "resource"), []byte("0x0 0x0\n"), 0o600)
		_, err := Open(ff.sysfs, ff.dev, testAddr, ff.opts)
		if err == nil || !strings.Contains(err.Error(), filepath.Join(testAddr, "resource")) {
			t.Fatalf("Open = %v, want an error naming the resource file", err)
		}
	})
}
