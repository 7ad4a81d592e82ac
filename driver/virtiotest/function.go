package virtiotest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"github.com/vserial/vserial/dma"
	"github.com/vserial/vserial/dma/dmatest"
	"github.com/vserial/vserial/ring/ringtest"
)

// PCI identification (VIRTIO-NOTES 1).
const (
	VendorID             = 0x1af4
	DeviceIDModern       = 0x1040 // + virtio device type
	DeviceIDTransitional = 0x1003 // console; other types per the spec 4.1.2.1 table
	classCommOther       = 0x0780
)

// Modern BAR4 layout, as QEMU lays it out (VIRTIO-NOTES 1, "QEMU BAR layout").
const (
	ModernBAR      = 4
	CommonOffset   = 0x0000
	ISROffset      = 0x1000
	DeviceOffset   = 0x2000
	NotifyOffset   = 0x3000
	NotifyMult     = 4
	structLength   = 0x1000
	modernBARSize  = 0x4000
	commonCfgBytes = 64 // through admin_queue_num; QEMU's cap covers 0x1000
)

// Configuration-space layout of the fake (QEMU-like order: the list starts
// with MSI-X and walks down through the vendor capabilities).
const (
	capMSIX    = 0x98
	capPCICfg  = 0x84
	capNotify  = 0x70
	capDevice  = 0x60
	capISR     = 0x50
	capCommon  = 0x40
	msixCtlOff = capMSIX + 2

	cmdIntxDisable = 1 << 10
	cmdBusMaster   = 1 << 2
	statusIntx     = 1 << 3
	statusCapList  = 1 << 4
	msixEnable     = 1 << 15
	msixFuncMask   = 1 << 14
)

// Feature bits the function itself deals with.
const (
	featVersion1       = uint64(1) << 32
	featAccessPlatform = uint64(1) << 33
	featIndirect       = uint64(1) << 28
	featEventIdx       = uint64(1) << 29
	featRingPacked     = uint64(1) << 34
	featNotifyOnEmpty  = uint64(1) << 24
	featAnyLayout      = uint64(1) << 27
	featBad            = uint64(1) << 30
)

// Device status bits.
const (
	stAcknowledge = 1
	stDriver      = 2
	stDriverOK    = 4
	stFeaturesOK  = 8
	stNeedsReset  = 64
)

// transitionalID maps virtio device types to transitional PCI device ids
// (spec 4.1.2.1).
var transitionalID = map[uint16]uint16{1: 0x1000, 2: 0x1001, 3: 0x1003, 4: 0x1005, 5: 0x1002, 8: 0x1004, 9: 0x1009}

// NoVector is VIRTIO_MSI_NO_VECTOR.
const NoVector = 0xffff

// TransportMisbehaviour switches make the PCI function break one rule of the
// virtio-pci transport each.
type TransportMisbehaviour struct {
	// RefuseFeaturesOK: the device never keeps FEATURES_OK.
	RefuseFeaturesOK bool
	// ResetNeverCompletes: writing 0 to the status does nothing; the status
	// never reads 0.
	ResetNeverCompletes bool
	// BogusCapability: the COMMON_CFG capability points beyond BAR4.
	BogusCapability bool
	// QueueSizeZero: every queue reports size 0.
	QueueSizeZero bool
	// QueueSizeNotPow2: every existing queue reports a maximum size of 100.
	QueueSizeNotPow2 bool
	// VectorRefused: MSI-X vector writes read back 0xFFFF.
	VectorRefused bool
	// VectorsAccepted > 0: only vectors below it are kept; the others
	// read back 0xFFFF (QEMU does so when it cannot route a vector).
	VectorsAccepted uint16
	// NumQueues > 0: num_queues reads this, and queues at or above it do not
	// exist, whatever the model says.
	NumQueues uint16
	// UnstableConfigGeneration: config_generation changes on every read.
	UnstableConfigGeneration bool
	// NotifyOffBeyondCap: queue_notify_off reads a value whose doorbell lies
	// outside the notify structure.
	NotifyOffBeyondCap bool
}

// Options describe the function to build.
type Options struct {
	// Transitional exposes the legacy I/O BAR0 as well as the modern
	// capabilities (device id 0x1003, revision 0, subsystem device = type).
	Transitional bool
	// LegacyOnly exposes only the legacy BAR0: no virtio capabilities.
	LegacyOnly bool
	// MSIXVectors > 0 gives the MSI-X capability that table size, turns
	// MSI-X on (as VFIO does when the driver enables the MSI-X IRQ index)
	// and makes IRQ report that many vectors; 0 means INTx (the capability
	// is still there, with 2 entries and disabled, as with uio_pci_generic).
	MSIXVectors int
	// IOMMUPlatform offers VIRTIO_F_ACCESS_PLATFORM, makes it mandatory (QEMU
	// iommu_platform=on) and makes IOMMU report true.
	IOMMUPlatform bool
	// Packed offers VIRTIO_F_RING_PACKED on the modern interface (QEMU
	// packed=on); queues enabled after the driver accepted it are served
	// as packed rings.
	Packed bool
	// Heap is the device-visible memory; nil makes a new one.
	Heap *dmatest.Heap
	// Misbehave arms transport-level misbehaviour.
	Misbehave TransportMisbehaviour
}

// MandatoryFeatures may be implemented by a Model: the function refuses
// FEATURES_OK unless the driver accepted all these bits.
type MandatoryFeatures interface {
	MandatoryFeatures() uint64
}

// ConfigSizer may be implemented by a Model to give the size of its device
// configuration (it sizes the legacy BAR0); without it 12 bytes are assumed
// (the console's).
type ConfigSizer interface {
	ConfigSize() int
}

// The scan of Model.QueueMax that finds num_queues covers the first
// denseScanQueues queues, then goes on until a queue is absent (a console
// with 0x7fff ports has 0xffff queues), at most to num_queues' limit.
const (
	denseScanQueues = 1024
	maxScanQueues   = 0xffff
)

type queue struct {
	max                  uint16 // size the device offers (0: absent)
	size                 uint16
	vector               uint16
	enabled              bool
	desc, driver, device uint64
	pfn                  uint32
	dev                  ringtest.Queue
}

// QueueInfo is what the driver programmed for one queue.
type QueueInfo struct {
	Max, Size            uint16
	Vector               uint16
	Enabled              bool
	Desc, Driver, Device uint64
	PFN                  uint32 // legacy
}

// Function is a fake virtio PCI function. Its methods have the shapes of
// driver.Function (Config, BAR, IRQ, DMA, IOMMU); virtiotest does not import
// package driver (its tests import this package), so a test in driver wraps
// it in a one-line adapter.
//
// Model methods are never called with the function's lock held: Notify runs
// synchronously in the driver's goroutine, inside the doorbell write (as QEMU
// processes a kick), Start inside the status write that sets DRIVER_OK and
// Reset inside the status write of 0.
type Function struct {
	model Model
	opts  Options
	heap  *dmatest.Heap
	irq   *IRQ

	// Fixed at New.
	modelFeatures uint64
	mandatory     uint64
	maxes         []uint16

	mu         sync.Mutex
	cfg        [256]byte
	numQueues  uint16
	offered    uint64 // modern view
	status     uint8
	isr        uint8
	generation uint8
	dfSelect   uint32
	gfSelect   uint32
	accepted   uint64
	cfgVector  uint16
	queueSel   uint16
	queues     []queue
	cfgSize    int
	legacyLen  uint64
	violations []error
	resets     int
	notifies   []uint16
	fired      int
	vectors    uint64 // MSI-X vectors signalled since the last WaitVectors (bit 63: ≥ 63)
}

// New builds a function around model.
func New(model Model, opts Options) (*Function, error) {
	if opts.LegacyOnly && opts.Transitional {
		return nil, errors.New("virtiotest: new: LegacyOnly and Transitional are exclusive")
	}
	if opts.MSIXVectors < 0 || opts.MSIXVectors > 0x800 {
		return nil, fmt.Errorf("virtiotest: new: %d MSI-X vectors", opts.MSIXVectors)
	}
	if opts.IOMMUPlatform && (opts.LegacyOnly || opts.Transitional) {
		return nil, errors.New("virtiotest: new: iommu_platform cannot be legacy (QEMU refuses it too)")
	}
	f := &Function{model: model, opts: opts, heap: opts.Heap, cfgSize: 12}
	if f.heap == nil {
		f.heap = dmatest.NewHeap()
	}
	if s, ok := model.(ConfigSizer); ok {
		f.cfgSize = s.ConfigSize()
	}
	f.legacyLen = 32
	for f.legacyLen < uint64(24+f.cfgSize) {
		f.legacyLen *= 2
	}
	// The model's answers are read once: the function never calls the model
	// with its lock held (a model may hold its own lock while calling Bus).
	f.modelFeatures = model.Features()
	if mf, ok := model.(MandatoryFeatures); ok {
		f.mandatory = mf.MandatoryFeatures()
	}
	var maxes []uint16
	for q := range maxScanQueues {
		n := model.QueueMax(uint16(q))
		if n == 0 && q >= denseScanQueues {
			break
		}
		maxes = append(maxes, n)
		if n != 0 {
			f.numQueues = uint16(q) + 1
		}
	}
	if opts.Misbehave.NumQueues > 0 {
		f.numQueues = opts.Misbehave.NumQueues
	}
	f.queues = make([]queue, f.numQueues)
	f.maxes = make([]uint16, f.numQueues)
	copy(f.maxes, maxes)
	f.offered = f.modelFeatures &^ (featNotifyOnEmpty | featAnyLayout | featBad)
	if !opts.LegacyOnly {
		f.offered |= featVersion1
	}
	if opts.IOMMUPlatform {
		f.offered |= featAccessPlatform
	}
	if opts.Packed && !opts.LegacyOnly {
		f.offered |= featRingPacked
	}
	f.buildConfig()
	irq, err := newIRQ(f)
	if err != nil {
		return nil, err
	}
	f.irq = irq
	f.resetLocked()
	return f, nil
}

// Close releases the interrupt eventfd, unblocking a pending Wait.
func (f *Function) Close() error { return f.irq.close() }

func (f *Function) put16(off int, v uint16) { binary.LittleEndian.PutUint16(f.cfg[off:], v) }
func (f *Function) put32(off int, v uint32) { binary.LittleEndian.PutUint32(f.cfg[off:], v) }

func (f *Function) buildConfig() {
	typ := f.model.DeviceType()
	f.put16(0x00, VendorID)
	if f.opts.Transitional || f.opts.LegacyOnly {
		f.put16(0x02, transitionalID[typ])
		f.cfg[0x08] = 0 // revision: legacy drivers need 0
		f.put16(0x2e, typ)
	} else {
		f.put16(0x02, DeviceIDModern+typ)
		f.cfg[0x08] = 1
		f.put16(0x2e, 0x1100)
	}
	f.put16(0x2c, VendorID)
	f.cfg[0x0a], f.cfg[0x0b] = classCommOther&0xff, classCommOther>>8
	f.cfg[0x3d] = 1 // INTA#
	if f.opts.Transitional || f.opts.LegacyOnly {
		f.put32(0x10, 0xc001) // I/O BAR0
	}
	f.put32(0x14, 0xfebf0000) // BAR1: MSI-X table
	if !f.opts.LegacyOnly {
		f.put32(0x20, 0xfe00000c) // BAR4: 64-bit prefetchable memory
	}
	f.put16(0x06, statusCapList)
	f.cfg[0x34] = capMSIX

	// MSI-X: table in BAR1 at 0, PBA at 0x800.
	vectors := f.opts.MSIXVectors
	if vectors == 0 {
		vectors = 2
	}
	f.cfg[capMSIX] = 0x11
	ctl := uint16(vectors - 1)
	if f.opts.MSIXVectors > 0 {
		ctl |= msixEnable
	}
	f.put16(capMSIX+2, ctl)
	f.put32(capMSIX+4, 1)
	f.put32(capMSIX+8, 0x800|1)
	if f.opts.LegacyOnly {
		return
	}
	f.cfg[capMSIX+1] = capPCICfg
	commonOff := uint32(CommonOffset)
	if f.opts.Misbehave.BogusCapability {
		commonOff = modernBARSize + 0x1000
	}
	f.vendorCap(capPCICfg, capNotify, 5, 20, 0, 0, 0)
	f.vendorCap(capNotify, capDevice, 2, 20, ModernBAR, NotifyOffset, uint32(f.notifyLen()))
	f.put32(capNotify+16, NotifyMult)
	f.vendorCap(capDevice, capISR, 4, 16, ModernBAR, DeviceOffset, structLength)
	f.vendorCap(capISR, capCommon, 3, 16, ModernBAR, ISROffset, structLength)
	f.vendorCap(capCommon, 0, 1, 16, ModernBAR, commonOff, structLength)
}

// notifyLen is the notify structure's length: QEMU's 0x1000 (1024
// doorbells), longer when the function has more queues.
func (f *Function) notifyLen() int { return NotifyMult * max(1024, int(f.numQueues)) }

func (f *Function) vendorCap(at, next int, typ, length uint8, bar uint8, off, n uint32) {
	f.cfg[at] = 0x09
	f.cfg[at+1] = uint8(next)
	f.cfg[at+2] = length
	f.cfg[at+3] = typ
	f.cfg[at+4] = bar
	f.put32(at+8, off)
	f.put32(at+12, n)
}

// violate records a driver access QEMU would mishandle. Callers hold f.mu.
func (f *Function) violate(format string, args ...any) {
	f.violations = append(f.violations, fmt.Errorf("virtiotest: "+format, args...))
}

// Violations returns every access the driver made that breaks the
// transport's rules (wrong width, misaligned, writing 0 to queue_enable or
// QUEUE_PFN, accepting unoffered features, notifying before DRIVER_OK...).
// A correct driver leaves it empty.
func (f *Function) Violations() []error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]error(nil), f.violations...)
}

// Status returns the device status as the device holds it.
func (f *Function) Status() uint8 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.status
}

// Accepted returns the features the driver wrote.
func (f *Function) Accepted() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.accepted
}

// Resets counts device resets (status 0 writes, and QUEUE_PFN 0 writes).
func (f *Function) Resets() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.resets
}

// Notifies returns the queues notified so far, in order.
func (f *Function) Notifies() []uint16 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]uint16(nil), f.notifies...)
}

// Queue returns what the driver programmed for queue q.
func (f *Function) Queue(q uint16) (QueueInfo, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if int(q) >= len(f.queues) {
		return QueueInfo{}, false
	}
	s := &f.queues[q]
	return QueueInfo{Max: s.max, Size: s.size, Vector: s.vector, Enabled: s.enabled,
		Desc: s.desc, Driver: s.driver, Device: s.device, PFN: s.pfn}, true
}

// Heap returns the device-visible memory.
func (f *Function) Heap() *dmatest.Heap { return f.heap }

// DMA returns the allocator for device-visible memory.
func (f *Function) DMA() dma.Allocator { return f.heap }

// IOMMU reports whether the function behaves as behind an IOMMU.
func (f *Function) IOMMU() bool { return f.opts.IOMMUPlatform }

// IRQ returns the interrupt source.
func (f *Function) IRQ() *IRQ { return f.irq }

// Config returns configuration space.
func (f *Function) Config() *ConfigSpace { return &ConfigSpace{f: f} }

// BAR returns BAR i: 0 is the legacy register file (transitional and
// legacy-only functions), 4 the modern one.
func (f *Function) BAR(i int) (*BAR, error) {
	switch {
	case i == 0 && (f.opts.Transitional || f.opts.LegacyOnly):
		return &BAR{f: f, idx: 0, size: f.legacyLen}, nil
	case i == ModernBAR && !f.opts.LegacyOnly:
		return &BAR{f: f, idx: ModernBAR, size: uint64(NotifyOffset + f.notifyLen())}, nil
	}
	return nil, fmt.Errorf("virtiotest: BAR%d: not a memory or I/O region of this function", i)
}

// SetMSIX turns MSI-X on or off as the host kernel would when the driver
// (de)configures the MSI-X IRQ index.
func (f *Function) SetMSIX(on bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	ctl := binary.LittleEndian.Uint16(f.cfg[msixCtlOff:])
	if on {
		ctl |= msixEnable
	} else {
		ctl &^= msixEnable
	}
	f.put16(msixCtlOff, ctl)
}

func (f *Function) msixOnLocked() bool {
	return binary.LittleEndian.Uint16(f.cfg[msixCtlOff:])&msixEnable != 0
}

// resetLocked returns the device to its reset state (spec 2.4) except the
// model, which the caller resets after dropping the lock.
func (f *Function) resetLocked() {
	f.status, f.isr = 0, 0
	f.dfSelect, f.gfSelect, f.accepted, f.queueSel = 0, 0, 0, 0
	f.cfgVector = NoVector
	for q := range f.queues {
		max := f.maxes[q]
		switch {
		case f.opts.Misbehave.QueueSizeZero:
			max = 0
		case f.opts.Misbehave.QueueSizeNotPow2 && max != 0:
			max = 100
		}
		f.queues[q] = queue{max: max, size: max, vector: NoVector}
	}
	f.setIntxStatusLocked()
}

// ConfigSpace is the function's PCI configuration space.
type ConfigSpace struct{ f *Function }

// ReadAt reads configuration space; accesses must be 1, 2 or 4 bytes,
// naturally aligned. A read of pci_cfg_data in the PCI_CFG capability
// performs the BAR read the capability selects (spec 4.1.4.9).
func (c *ConfigSpace) ReadAt(p []byte, off int64) (int, error) {
	f := c.f
	if f.inWindow(off) {
		f.windowAccess(false)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.checkCfgAccess(len(p), off); err != nil {
		return 0, err
	}
	copy(p, f.cfg[off:])
	return len(p), nil
}

// windowData is pci_cfg_data of the PCI_CFG capability.
const windowData = capPCICfg + 16

func (f *Function) inWindow(off int64) bool {
	return !f.opts.LegacyOnly && off >= windowData && off < windowData+4
}

// windowAccess performs the BAR access the PCI_CFG capability selects: cap
// bar, offset and length (1, 2 or 4, offset a multiple of it), data in
// pci_cfg_data. Anything else does nothing, as the spec leaves it undefined.
func (f *Function) windowAccess(write bool) {
	f.mu.Lock()
	barIdx := int(f.cfg[capPCICfg+4])
	at := uint64(binary.LittleEndian.Uint32(f.cfg[capPCICfg+8:]))
	n := binary.LittleEndian.Uint32(f.cfg[capPCICfg+12:])
	data := binary.LittleEndian.Uint32(f.cfg[windowData:])
	f.mu.Unlock()
	if n != 1 && n != 2 && n != 4 || at%uint64(n) != 0 {
		return
	}
	b, err := f.BAR(barIdx)
	if err != nil {
		return
	}
	if write {
		switch n {
		case 1:
			_ = b.Write8(at, uint8(data))
		case 2:
			_ = b.Write16(at, uint16(data))
		default:
			_ = b.Write32(at, data)
		}
		return
	}
	var v uint32
	switch n {
	case 1:
		x, _ := b.Read8(at)
		v = uint32(x)
	case 2:
		x, _ := b.Read16(at)
		v = uint32(x)
	default:
		v, _ = b.Read32(at)
	}
	f.mu.Lock()
	f.put32(windowData, v)
	f.mu.Unlock()
}

// WriteAt writes configuration space. Writable: the command register
// (I/O, memory, bus master, INTx disable), MSI-X message control (enable,
// function mask) and the PCI_CFG capability's bar/offset/length fields;
// everything else is read-only and writes to it are dropped. A write of
// pci_cfg_data performs the BAR write the PCI_CFG capability selects.
func (c *ConfigSpace) WriteAt(p []byte, off int64) (int, error) {
	f := c.f
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.checkCfgAccess(len(p), off); err != nil {
		return 0, err
	}
	for i, b := range p {
		o := int(off) + i
		switch {
		case o == 0x04:
			f.cfg[o] = b & 0x07
		case o == 0x05:
			f.cfg[o] = b & 0x04
			f.setIntxStatusLocked()
			f.raiseLocked()
		case o == msixCtlOff+1: // enable (bit 15) and function mask (bit 14)
			f.cfg[o] = f.cfg[o]&0x3f | b&0xc0
		case !f.opts.LegacyOnly && o >= capPCICfg+4 && o < capPCICfg+20 && (o < capPCICfg+5 || o >= capPCICfg+8):
			f.cfg[o] = b
		}
	}
	if f.inWindow(off) {
		f.mu.Unlock()
		f.windowAccess(true)
		f.mu.Lock()
	}
	return len(p), nil
}

func (f *Function) checkCfgAccess(n int, off int64) error {
	if n != 1 && n != 2 && n != 4 || off < 0 || off%int64(n) != 0 || off+int64(n) > int64(len(f.cfg)) {
		f.violate("config space access of %d bytes at %#x: must be 1, 2 or 4 bytes, aligned, inside 256", n, off)
		return fmt.Errorf("virtiotest: config space: bad access of %d bytes at %#x", n, off)
	}
	return nil
}

// ClearViolations forgets the recorded violations (for tests that provoke
// some on purpose).
func (f *Function) ClearViolations() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.violations = nil
}
