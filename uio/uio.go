package uio

// The uio_pci_generic binding (Open, Function), step by step. The method
// sets match package driver's Function, ConfigSpace, BAR and IRQ
// interfaces, to which cmd adapts them; uio does not import driver.
//
//   - Open(sysfs, dev, addr, opts) expects the function to be bound to
//     uio_pci_generic already (package pciscan does that) and fails with
//     ErrNotBound otherwise. It opens /dev/uioN non-blocking through the Go
//     poller and the sysfs config file, and sets Memory Space, I/O Space and
//     Bus Master in the command register while clearing Interrupt Disable.
//     uio_pci_generic enables decoding but never Bus Master, and closing the
//     last /dev/uioN descriptor clears Bus Master again (VIRTIO-NOTES §9.1).
//   - Config reads and writes configuration space with one pread/pwrite of
//     exactly the requested length; the kernel turns an aligned 1, 2 or 4
//     byte access into one config cycle of that width.
//   - BAR(i) maps a memory BAR (sysfs resourceN, MAP_SHARED, uncached, never
//     resourceN_wc) and accesses it with single loads and stores of exactly
//     the named width (bar_unsafe.go); an I/O BAR is accessed with pread and
//     pwrite of exactly 1, 2 or 4 bytes on resourceN, which the kernel turns
//     into one in/out instruction. Kind and size come from the sysfs resource
//     file. Values are little-endian; Open refuses big-endian hosts.
//   - IRQ is INTx only (MSIXVectors is 0). Wait reads the 4-byte interrupt
//     count from /dev/uioN in the poller; a cancelled context or Close
//     unblocks it. Unmask clears Interrupt Disable (command bit 10)
//     with one 16-bit write of the cached command register at offset 4,
//     never a byte write at offset 5 as VIRTIO-NOTES §9.3 suggests: QEMU
//     (7.2) ignores the INTx line on command writes that miss byte 4 and
//     would lose an interrupt raised while masked. The caller reads the
//     device's ISR between Wait and Unmask.
//   - DMA returns an allocator of zeroed, locked memory whose device
//     addresses are physical addresses: 2 MiB hugepages (physically
//     contiguous; their physical address comes from /proc/self/pagemap,
//     which needs CAP_SYS_ADMIN), sub-allocated so that no region crosses a
//     hugepage. With Options.AllowSmallPages it falls back to single locked
//     4 KiB pages when no hugepage can be had; see SmallPages for the caveat.
//   - IOMMU is false: the device sees guest-physical addresses, so a
//     misbehaving device can reach any memory. Open refuses confidential
//     guests (SEV, TDX), whose devices can reach only memory the kernel
//     shares (best-effort detection, see Confidential).
//   - Close is idempotent. The caller resets the device first; Close then
//     unmaps BARs, unmaps all DMA memory and closes the descriptors.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/vserial/vserial/dma"
)

// Options configure Open. The zero value is the production setting.
type Options struct {
	// Pagemap is the pagemap file of this process; default /proc/self/pagemap.
	Pagemap string
	// HugepagesFile is the pool size of 2 MiB hugepages; default
	// SYSFS/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages. (Not
	// /proc/sys/vm/nr_hugepages: that one counts pages of the default size,
	// which may be 1 GiB.)
	HugepagesFile string
	// NoReserve forbids raising the hugepage pool when no page is free.
	// By default the allocator adds each page it needs to the pool (a
	// system setting) and lowers the pool by as many pages at Close.
	NoReserve bool
	// AllowSmallPages falls back to single locked 4 KiB pages when no
	// hugepage can be had. Each allocation is then at most 4096 bytes, and
	// the kernel may migrate such a page under the device; see the
	// smallSource comment. Off by default.
	AllowSmallPages bool
	// Meminfo is read for a CMA area (migration.go); default /proc/meminfo.
	Meminfo string
	// CPUInfo is read to detect confidential guests; default /proc/cpuinfo.
	CPUInfo string
	// IgnoreConfidential opens the device even if the guest looks
	// confidential (for a wrong detection; see Confidential).
	IgnoreConfidential bool
	// Logger receives one line per notable event; default slog.Default().
	Logger *slog.Logger

	// source replaces the page sources in tests.
	source PageSource
}

// Function is a PCI function opened through uio_pci_generic. Its method set
// matches driver.Function (Config, BAR, IRQ, DMA, IOMMU) with concrete
// types; cmd adapts it.
type Function struct {
	addr   string
	dir    string
	log    *slog.Logger
	cfg    *Config
	irq    *IRQ
	alloc  *Allocator
	res    []Resource
	mu     sync.Mutex
	bars   BARs
	closed bool
}

var addrRE = regexp.MustCompile(`^[0-9a-f]{4,8}:[0-9a-f]{2}:[01][0-9a-f]\.[0-7]$`)

var uioNameRE = regexp.MustCompile(`^uio[0-9]+$`)

// Open opens the function at addr (canonical form, "0000:00:03.0"), which
// must already be bound to uio_pci_generic. sysfs is the sysfs root ("/sys"),
// dev the device directory ("/dev"). See the package documentation for what
// Open sets up.
func Open(sysfs, dev, addr string, opts Options) (_ *Function, err error) {
	fail := func(err error) (*Function, error) { return nil, &OpError{Op: "open", Addr: addr, Err: err} }
	dir, log, err := CheckFunction(sysfs, addr, opts)
	if err != nil {
		return fail(err)
	}
	if !opts.IgnoreConfidential {
		if err := RefuseConfidential(opts, dev, log); err != nil {
			return fail(err)
		}
	}
	uioName, err := findUIO(dir)
	if err != nil {
		return fail(err)
	}

	// Everything acquired below is released in reverse order on failure.
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()

	irqFile, err := openUIONode(dir, dev, uioName)
	if err != nil {
		return fail(err)
	}
	undo = append(undo, func() { irqFile.Close() })

	cf, err := os.OpenFile(filepath.Join(dir, "config"), os.O_RDWR, 0)
	if err != nil {
		return fail(err)
	}
	cfg := NewConfig(newRawConfigFile(cf))
	undo = append(undo, func() { cf.Close() })

	res, err := ReadResources(dir)
	if err != nil {
		return fail(err)
	}

	if err := cfg.Enable(); err != nil {
		return fail(fmt.Errorf("set Bus Master: %w", err))
	}

	WarnMigration(sysfs, opts, log, "uio")
	src, fallback := opts.source, PageSource(nil)
	if src == nil {
		src, fallback = PhysicalPages(sysfs, opts)
	}
	alloc := NewAllocator(src, fallback, log)
	// Closed on failure even if no chunk was mapped: a hugepage the pool
	// was raised for is given back.
	undo = append(undo, func() { alloc.Close() })
	// Map the first chunk now, so a missing hugepage or privilege shows up
	// at start-up rather than at the first queue setup.
	if err := alloc.Prime(); err != nil {
		return fail(fmt.Errorf("dma memory: %w", err))
	}

	f := &Function{
		addr: addr, dir: dir, log: log,
		cfg: cfg, irq: newIRQ(irqFile, cfg), alloc: alloc, res: res,
	}
	log.Info("uio: opened", "addr", addr, "uio", uioName, "dma", alloc.Describe())
	return f, nil
}

// openUIONode opens /dev/uioN non-blocking, so that the file joins Go's
// poller and Wait sleeps there instead of in a thread blocked in read(2).
func openUIONode(dir, dev, uioName string) (*os.File, error) {
	devPath := filepath.Join(dev, uioName)
	fd, err := unix.Open(devPath, unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		// No devtmpfs (or no udev) made the node: say how to make it.
		num, _ := os.ReadFile(filepath.Join(dir, "uio", uioName, "dev"))
		return nil, fmt.Errorf("%s does not exist (is devtmpfs mounted on %s?); the device number is %q in sysfs: mknod %s c MAJOR MINOR",
			devPath, dev, strings.TrimSpace(string(num)), devPath)
	}
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: devPath, Err: err}
	}
	return os.NewFile(uintptr(fd), devPath), nil
}

// CheckFunction does the checks both bindings start with: a canonical
// address, a little-endian host, and the function's sysfs directory (which
// it returns with the logger to use).
func CheckFunction(sysfs, addr string, opts Options) (string, *slog.Logger, error) {
	if !addrRE.MatchString(addr) {
		return "", nil, fmt.Errorf("malformed PCI address %q (want DDDD:BB:DD.F)", addr)
	}
	if binary.NativeEndian.Uint16([]byte{1, 0}) != 1 {
		return "", nil, errors.New("big-endian hosts are not supported (MMIO accessors assume little-endian)")
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	dir := filepath.Join(sysfs, "bus", "pci", "devices", addr)
	if _, err := os.Stat(dir); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", nil, fmt.Errorf("%w: %s", ErrNoDevice, dir)
		}
		return "", nil, err
	}
	return dir, log, nil
}

// findUIO returns the name of the uioN device under dir/uio, or ErrNotBound
// naming the driver that holds the function.
func findUIO(dir string) (string, error) {
	ents, err := os.ReadDir(filepath.Join(dir, "uio"))
	if errors.Is(err, os.ErrNotExist) {
		drv := "no driver"
		if t, err := os.Readlink(filepath.Join(dir, "driver")); err == nil {
			drv = filepath.Base(t)
		}
		return "", fmt.Errorf("%w (held by %s)", ErrNotBound, drv)
	}
	if err != nil {
		return "", err
	}
	var names []string
	for _, e := range ents {
		if uioNameRE.MatchString(e.Name()) {
			names = append(names, e.Name())
		}
	}
	if len(names) != 1 {
		return "", fmt.Errorf("%w: %s lists %d uio devices [%s], want 1", ErrNotBound, filepath.Join(dir, "uio"), len(names), strings.Join(names, " "))
	}
	return names[0], nil
}

// Addr is the function's PCI address.
func (f *Function) Addr() string { return f.addr }

// Config returns configuration space.
func (f *Function) Config() *Config { return f.cfg }

// BAR returns region i (0-5), mapping or opening it on first use.
func (f *Function) BAR(i int) (*BAR, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.bars.Get(f.closed, f.addr, i, func() (*BAR, error) {
		if i >= len(f.res) {
			return nil, ErrNoBAR
		}
		return openBAR(f.dir, i, f.res[i])
	})
}

// IRQ returns the INTx interrupt.
func (f *Function) IRQ() *IRQ { return f.irq }

// DMA returns the allocator of device-visible memory.
func (f *Function) DMA() dma.Allocator { return f.alloc }

// Allocator is DMA with its concrete type, for statistics.
func (f *Function) Allocator() *Allocator { return f.alloc }

// IOMMU is false: uio_pci_generic gives the device physical addresses.
func (f *Function) IOMMU() bool { return false }

// Close releases everything Open acquired. The caller resets the device
// first. Close clears Bus Master before it unmaps DMA memory, so even a
// device that was not reset cannot write into freed pages; it then closes
// /dev/uioN (which wakes a blocked Wait with os.ErrClosed; the kernel also
// clears Bus Master when the last descriptor closes), unmaps BARs and DMA
// memory, and closes the config file. It is idempotent.
func (f *Function) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil
	}
	f.closed = true
	var errs []error
	if err := f.cfg.DisableBusMaster(); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, f.irq.close())
	errs = append(errs, f.bars.Close())
	errs = append(errs, f.alloc.Close(), f.cfg.close())
	if err := errors.Join(errs...); err != nil {
		return &OpError{Op: "close", Addr: f.addr, Err: err}
	}
	f.log.Info("uio: closed", "addr", f.addr)
	return nil
}
