package driver

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"testing"

	"github.com/vserial/vserial/dma"
	"github.com/vserial/vserial/dma/dmatest"
)

// rawConfig is a bare 256-byte configuration space for capability tests.
type rawConfig [256]byte

func (c *rawConfig) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > int64(len(c)) {
		return 0, fmt.Errorf("config read %d at %#x out of range", len(p), off)
	}
	return copy(p, c[off:]), nil
}

func (c *rawConfig) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > int64(len(c)) {
		return 0, fmt.Errorf("config write %d at %#x out of range", len(p), off)
	}
	return copy(c[off:], p), nil
}

// listStart turns on the capability list and points it at first.
func (c *rawConfig) listStart(first uint8) {
	c[pciStatus] |= pciStatusCapLst
	c[pciCapPtr] = first
}

// vcap writes a virtio_pci_cap at at.
func (c *rawConfig) vcap(at, next, capLen, typ, bar uint8, off, length uint32) {
	c[at], c[at+1], c[at+2], c[at+3], c[at+4] = pciCapIDVendor, next, capLen, typ, bar
	binary.LittleEndian.PutUint32(c[at+8:], off)
	binary.LittleEndian.PutUint32(c[at+12:], length)
}

// zeroBAR is a BAR of a given size whose registers read 0.
type zeroBAR uint64

func (b zeroBAR) Len() uint64                  { return uint64(b) }
func (zeroBAR) Read8(uint64) (uint8, error)    { return 0, nil }
func (zeroBAR) Read16(uint64) (uint16, error)  { return 0, nil }
func (zeroBAR) Read32(uint64) (uint32, error)  { return 0, nil }
func (zeroBAR) Write8(uint64, uint8) error     { return nil }
func (zeroBAR) Write16(uint64, uint16) error   { return nil }
func (zeroBAR) Write32(uint64, uint32) error   { return nil }
func (zeroIRQ) MSIXVectors() int               { return 0 }
func (zeroIRQ) Wait(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }
func (zeroIRQ) Unmask() error                  { return nil }
func (f *capFunction) Config() ConfigSpace     { return &f.cfg }
func (f *capFunction) IRQ() IRQ                { return zeroIRQ{} }
func (f *capFunction) DMA() dma.Allocator      { return dmatest.NewHeap() }
func (f *capFunction) IOMMU() bool             { return false }

type zeroIRQ struct{}

// capFunction is a Function made of a raw configuration space and BARs of
// given sizes.
type capFunction struct {
	cfg  rawConfig
	bars map[int]uint64
}

func (f *capFunction) BAR(i int) (BAR, error) {
	n, ok := f.bars[i]
	if !ok {
		return nil, fmt.Errorf("BAR%d absent", i)
	}
	return zeroBAR(n), nil
}

// qemuLike lays out the four structures in BAR4 as QEMU does.
func qemuLike() *capFunction {
	f := &capFunction{bars: map[int]uint64{4: 0x4000}}
	f.cfg.listStart(0x40)
	f.cfg.vcap(0x40, 0x50, 16, capCommonCfg, 4, 0x0000, 0x1000)
	f.cfg.vcap(0x50, 0x60, 16, capISRCfg, 4, 0x1000, 0x1000)
	f.cfg.vcap(0x60, 0x70, 16, capDeviceCfg, 4, 0x2000, 0x1000)
	f.cfg.vcap(0x70, 0x84, 20, capNotifyCfg, 4, 0x3000, 0x1000)
	binary.LittleEndian.PutUint32(f.cfg[0x70+16:], 4)
	f.cfg.vcap(0x84, 0, 20, capPCICfg, 0, 0, 0)
	return f
}

func TestCapabilityWalkQEMULayout(t *testing.T) {
	f := qemuLike()
	caps, err := readCaps(&f.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if caps.common == nil || caps.notify == nil || caps.isr == nil || caps.device == nil || caps.pcicfg == nil {
		t.Fatalf("missing capabilities: %+v", caps)
	}
	if caps.notify.mult != 4 || caps.notify.offset != 0x3000 || caps.device.offset != 0x2000 {
		t.Fatalf("notify %+v device %+v", *caps.notify, *caps.device)
	}
	tr, err := newTransport(f, nil)
	if err != nil {
		t.Fatal(err)
	}
	if tr.Legacy() {
		t.Fatal("QEMU layout taken as legacy")
	}
}

// Spec 4.1.4: the first capability of each type is the device's preference;
// reserved cfg_type and reserved BAR values are ignored, not errors.
func TestCapabilityWalkFirstOfTypeAndReservedIgnored(t *testing.T) {
	f := qemuLike()
	// 0x40 → 0xa0 (reserved type 6) → 0xb0 (common, reserved BAR 7)
	//      → 0xc0 (common, BAR4 0x100) → 0xd0 (common, BAR4 0x200) → 0x50 ...
	f.cfg.listStart(0xa0)
	f.cfg.vcap(0xa0, 0xb0, 16, 6, 4, 0x3f00, 0x10)
	f.cfg.vcap(0xb0, 0xc0, 16, capCommonCfg, 7, 0x0, 0x1000)
	f.cfg.vcap(0xc0, 0xd0, 16, capCommonCfg, 4, 0x100, 0x100)
	f.cfg.vcap(0xd0, 0x40, 16, capCommonCfg, 4, 0x200, 0x100)
	caps, err := readCaps(&f.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if caps.common.offset != 0x100 || caps.common.at != 0xc0 {
		t.Fatalf("common = %+v, want the one at 0xc0", *caps.common)
	}
}

// VIRTIO-NOTES 2.1: mask the low 2 bits of every capability pointer.
func TestCapabilityPointerLowBitsMasked(t *testing.T) {
	f := qemuLike()
	f.cfg.listStart(0x43)
	f.cfg[0x41] = 0x53
	caps, err := readCaps(&f.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if caps.common == nil || caps.isr == nil || caps.notify == nil {
		t.Fatalf("caps %+v", caps)
	}
}

func TestCapabilityStatusBitClearMeansNoList(t *testing.T) {
	f := qemuLike()
	f.cfg[pciStatus] &^= pciStatusCapLst
	caps, err := readCaps(&f.cfg)
	if err != nil || caps.common != nil {
		t.Fatalf("caps %+v, err %v: the list must be ignored", caps, err)
	}
	// No modern capabilities and no BAR0: no transport at all.
	if _, err := newTransport(f, nil); !errors.Is(err, ErrNoTransport) {
		t.Fatalf("newTransport: %v, want ErrNoTransport", err)
	}
}

func TestCapabilityMalformedLists(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mangle func(f *capFunction)
	}{
		{"loop", func(f *capFunction) { f.cfg[0x84+1] = 0x40 }},
		{"self-loop", func(f *capFunction) { f.cfg[0x40+1] = 0x40 }},
		{"pointer into header", func(f *capFunction) { f.cfg[0x40+1] = 0x10 }},
		{"truncated cap_len", func(f *capFunction) { f.cfg[0x50+2] = 8 }},
		{"notify cap_len without multiplier", func(f *capFunction) { f.cfg[0x70+2] = 16 }},
		{"cap runs past config space", func(f *capFunction) {
			f.cfg[0x84+1] = 0xf8 // 16 bytes from 0xf8 end past 0xff
			f.cfg[0xf8], f.cfg[0xf9], f.cfg[0xfa], f.cfg[0xfb] = pciCapIDVendor, 0, 16, capDeviceCfg
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := qemuLike()
			tc.mangle(f)
			if _, err := readCaps(&f.cfg); !errors.Is(err, ErrBadCapability) {
				t.Fatalf("readCaps: %v, want ErrBadCapability", err)
			}
			if _, err := newTransport(f, nil); !errors.Is(err, ErrBadCapability) {
				t.Fatalf("newTransport: %v, want ErrBadCapability", err)
			}
		})
	}
}

// A structure that lies outside its BAR is an error at newTransport, never
// a later out-of-range access.
func TestCapabilityStructureOutsideBAR(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mangle func(f *capFunction)
	}{
		{"common offset beyond BAR", func(f *capFunction) { binary.LittleEndian.PutUint32(f.cfg[0x40+8:], 0x5000) }},
		{"device length past BAR end", func(f *capFunction) { binary.LittleEndian.PutUint32(f.cfg[0x60+12:], 0x2001) }},
		{"notify length overflows", func(f *capFunction) { binary.LittleEndian.PutUint32(f.cfg[0x70+12:], 0xffff_ffff) }},
		{"ISR offset at 4 GiB", func(f *capFunction) { binary.LittleEndian.PutUint32(f.cfg[0x50+8:], 0xffff_ffff) }},
		{"common shorter than virtio 1.0", func(f *capFunction) { binary.LittleEndian.PutUint32(f.cfg[0x40+12:], 0x20) }},
		{"common misaligned", func(f *capFunction) { binary.LittleEndian.PutUint32(f.cfg[0x40+8:], 0x2) }},
		{"odd notify multiplier", func(f *capFunction) { binary.LittleEndian.PutUint32(f.cfg[0x70+16:], 3) }},
		{"notify missing", func(f *capFunction) { f.cfg[0x60+1] = 0x84 }},
		{"BAR smaller than QEMU's", func(f *capFunction) { f.bars[4] = 0x2000 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := qemuLike()
			tc.mangle(f)
			if _, err := newTransport(f, nil); !errors.Is(err, ErrBadCapability) {
				t.Fatalf("newTransport: %v, want ErrBadCapability", err)
			}
		})
	}
}

func TestCapabilityBARMissingIsError(t *testing.T) {
	f := qemuLike()
	delete(f.bars, 4)
	if _, err := newTransport(f, nil); err == nil {
		t.Fatal("newTransport succeeded without BAR4")
	}
}

// Without COMMON_CFG the device is legacy-only (spec 4.1.5.1.1.1); BAR0
// must hold at least the 20-byte header.
func TestLegacyFallbackNeedsBAR0(t *testing.T) {
	f := &capFunction{bars: map[int]uint64{0: 32}}
	tr, err := newTransport(f, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !tr.Legacy() {
		t.Fatal("no COMMON_CFG but not legacy")
	}
	f.bars[0] = 16
	if _, err := newTransport(f, nil); !errors.Is(err, ErrNoTransport) {
		t.Fatalf("16-byte BAR0: %v, want ErrNoTransport", err)
	}
}

func TestMSIXCapabilityFound(t *testing.T) {
	f := qemuLike()
	f.cfg.listStart(0x98)
	f.cfg[0x98], f.cfg[0x99] = pciCapIDMSIX, 0x40
	binary.LittleEndian.PutUint16(f.cfg[0x9a:], msixControlEnable|1)
	caps, err := readCaps(&f.cfg)
	if err != nil {
		t.Fatal(err)
	}
	on, err := msixEnabled(&f.cfg, caps.msix)
	if caps.msix != 0x98 || err != nil || !on {
		t.Fatalf("msix cap at %#x, enabled %v, err %v", caps.msix, on, err)
	}
}

// FuzzCapabilityWalk feeds arbitrary configuration spaces to newTransport:
// it must never panic, and a transport it returns must only touch its BARs
// inside their bounds.
func FuzzCapabilityWalk(f *testing.F) {
	good := qemuLike()
	f.Add(good.cfg[:], uint32(0x4000))
	loop := qemuLike()
	loop.cfg[0x85] = 0x40
	f.Add(loop.cfg[:], uint32(0x4000))
	f.Add(good.cfg[:], uint32(0x100))
	f.Fuzz(func(t *testing.T, cfg []byte, barLen uint32) {
		fn := &capFunction{bars: map[int]uint64{}}
		copy(fn.cfg[:], cfg)
		for i := range 6 {
			fn.bars[i] = uint64(barLen)
		}
		tr, err := newTransport(fn, nil)
		if err != nil {
			return
		}
		m, ok := tr.(*modern)
		if !ok {
			return
		}
		for _, r := range []region{m.common, m.notify, m.isr} {
			if r.off+r.length > r.bar.Len() || r.off+r.length < r.off {
				t.Fatalf("region [%#x, +%#x) outside BAR of %#x", r.off, r.length, r.bar.Len())
			}
		}
		if m.hasDevice && m.device.off+m.device.length > m.device.bar.Len() {
			t.Fatalf("device region outside its BAR")
		}
	})
}
