package vfioabi

import (
	"bytes"
	"encoding/binary"
	"reflect"
	"strings"
	"testing"
)

// TestRequestNumbers pins the request numbers to VIRTIO-NOTES §8.1.
func TestRequestNumbers(t *testing.T) {
	for _, c := range []struct {
		name string
		got  uint
		want uint
	}{
		{"VFIO_GET_API_VERSION", GetAPIVersion, 0x3B64},
		{"VFIO_CHECK_EXTENSION", CheckExtension, 0x3B65},
		{"VFIO_SET_IOMMU", SetIOMMU, 0x3B66},
		{"VFIO_GROUP_GET_STATUS", GroupGetStatus, 0x3B67},
		{"VFIO_GROUP_SET_CONTAINER", GroupSetContainer, 0x3B68},
		{"VFIO_GROUP_UNSET_CONTAINER", GroupUnsetContainer, 0x3B69},
		{"VFIO_GROUP_GET_DEVICE_FD", GroupGetDeviceFD, 0x3B6A},
		{"VFIO_DEVICE_GET_INFO", DeviceGetInfo, 0x3B6B},
		{"VFIO_DEVICE_GET_REGION_INFO", DeviceGetRegion, 0x3B6C},
		{"VFIO_DEVICE_GET_IRQ_INFO", DeviceGetIRQInfo, 0x3B6D},
		{"VFIO_DEVICE_SET_IRQS", DeviceSetIRQs, 0x3B6E},
		{"VFIO_DEVICE_RESET", DeviceReset, 0x3B6F},
		{"VFIO_IOMMU_GET_INFO", IOMMUGetInfo, 0x3B70},
		{"VFIO_IOMMU_MAP_DMA", IOMMUMapDMA, 0x3B71},
		{"VFIO_IOMMU_UNMAP_DMA", IOMMUUnmapDMA, 0x3B72},
	} {
		if c.got != c.want {
			t.Errorf("%s = %#x, want %#x", c.name, c.got, c.want)
		}
	}
	if Type1v2IOMMU != 3 || NoIOMMU != 8 || Type1IOMMU != 1 {
		t.Errorf("IOMMU types %d %d %d, want 1 3 8", Type1IOMMU, Type1v2IOMMU, NoIOMMU)
	}
	if PCIMSIXIRQ != 2 || PCIConfigRegion != 7 {
		t.Errorf("MSI-X index %d config region %d, want 2 and 7", PCIMSIXIRQ, PCIConfigRegion)
	}
}

// layout is "offset:field" pairs as VIRTIO-NOTES §8.2 lists them.
type layout struct {
	c      string
	v      any
	size   uint32 // the Sizeof constant
	cSize  uintptr
	fields string
}

// TestStructLayout checks every structure's size and field offsets against
// the C layout in VIRTIO-NOTES §8.2 (checked there against the 6.1 header).
func TestStructLayout(t *testing.T) {
	for _, l := range []layout{
		{"vfio_group_status", GroupStatus{}, SizeofGroupStatus, 8, "0 Argsz, 4 Flags"},
		{"vfio_device_info", DeviceInfo{}, SizeofDeviceInfo, 24, "0 Argsz, 4 Flags, 8 NumRegions, 12 NumIRQs, 16 CapOffset, 20 Pad"},
		{"vfio_region_info", RegionInfo{}, SizeofRegionInfo, 32, "0 Argsz, 4 Flags, 8 Index, 12 CapOffset, 16 Size, 24 Offset"},
		{"vfio_irq_info", IRQInfo{}, SizeofIRQInfo, 16, "0 Argsz, 4 Flags, 8 Index, 12 Count"},
		{"vfio_irq_set", IRQSet{}, SizeofIRQSet, 20, "0 Argsz, 4 Flags, 8 Index, 12 Start, 16 Count"},
		{"vfio_iommu_type1_info", IOMMUType1Info{}, SizeofIOMMUType1Info, 24, "0 Argsz, 4 Flags, 8 IOVAPgsizes, 16 CapOffset, 20 Pad"},
		{"vfio_iommu_type1_dma_map", DMAMap{}, SizeofDMAMap, 32, "0 Argsz, 4 Flags, 8 Vaddr, 16 IOVA, 24 Size"},
		{"vfio_iommu_type1_dma_unmap", DMAUnmap{}, SizeofDMAUnmap, 24, "0 Argsz, 4 Flags, 8 IOVA, 16 Size"},
		{"vfio_info_cap_header", InfoCapHeader{}, SizeofInfoCapHeader, 8, "0 ID, 2 Version, 4 Next"},
	} {
		typ := reflect.TypeOf(l.v)
		if typ.Size() != l.cSize || uintptr(l.size) != l.cSize {
			t.Errorf("%s: Go size %d, constant %d, C size %d", l.c, typ.Size(), l.size, l.cSize)
		}
		var got []string
		for i := 0; i < typ.NumField(); i++ {
			f := typ.Field(i)
			got = append(got, strings.TrimSpace(strings.Join([]string{itoa(f.Offset), f.Name}, " ")))
		}
		if g := strings.Join(got, ", "); g != l.fields {
			t.Errorf("%s: layout %q, want %q", l.c, g, l.fields)
		}
	}
	// u64 fields must be 8-aligned in memory, as in C.
	if reflect.TypeOf(DMAMap{}).Align() != 8 || reflect.TypeOf(RegionInfo{}).Align() != 8 {
		t.Error("structures with u64 fields are not 8-byte aligned")
	}
}

func itoa(v uintptr) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + v%10)
		v /= 10
		if v == 0 {
			return string(b[i:])
		}
	}
}

// TestEncodeIRQSet checks the SET_IRQS argument for the two recipes of
// VIRTIO-NOTES §8.4 that the backend uses.
func TestEncodeIRQSet(t *testing.T) {
	b := EncodeIRQSet(PCIMSIXIRQ, 0, []int32{7, 9, -1})
	ne := binary.NativeEndian
	want := []uint32{32, 0x24, 2, 0, 3, 7, 9, 0xffffffff}
	if len(b) != 4*len(want) {
		t.Fatalf("%d bytes, want %d", len(b), 4*len(want))
	}
	for i, w := range want {
		if g := ne.Uint32(b[4*i:]); g != w {
			t.Errorf("word %d = %#x, want %#x", i, g, w)
		}
	}
	off := EncodeIRQSet(PCIMSIXIRQ, 0, nil)
	wantOff := []uint32{20, 0x21, 2, 0, 0}
	if len(off) != 20 {
		t.Fatalf("disable: %d bytes, want 20", len(off))
	}
	for i, w := range wantOff {
		if g := ne.Uint32(off[4*i:]); g != w {
			t.Errorf("disable word %d = %#x, want %#x", i, g, w)
		}
	}
}

func TestEncodeDeviceName(t *testing.T) {
	b, err := EncodeDeviceName("0000:00:03.0")
	if err != nil || !bytes.Equal(b, []byte("0000:00:03.0\x00")) {
		t.Fatalf("got %q, %v", b, err)
	}
	if _, err := EncodeDeviceName("a\x00b"); err == nil {
		t.Error("name with NUL accepted")
	}
	if _, err := EncodeDeviceName(""); err == nil {
		t.Error("empty name accepted")
	}
}

// capBuf builds an info buffer of fixed bytes followed by capabilities.
func capBuf(fixed int, caps ...[]byte) ([]byte, uint32) {
	b := make([]byte, fixed)
	first := uint32(0)
	prevNext := -1
	for _, c := range caps {
		off := len(b)
		if first == 0 {
			first = uint32(off)
		}
		if prevNext >= 0 {
			binary.NativeEndian.PutUint32(b[prevNext:], uint32(off))
		}
		prevNext = off + 4
		b = append(b, c...)
	}
	return b, first
}

func capHdr(id, ver uint16, body ...uint64) []byte {
	b := make([]byte, 8, 8+8*len(body))
	binary.NativeEndian.PutUint16(b, id)
	binary.NativeEndian.PutUint16(b[2:], ver)
	for _, v := range body {
		b = binary.NativeEndian.AppendUint64(b, v)
	}
	return b
}

func TestCapsIOVARanges(t *testing.T) {
	// nr_iovas=2 (low word of the first u64), then two ranges.
	buf, first := capBuf(24, capHdr(3, 1, 0), capHdr(IOMMUTypeCapIOVARange, 1, 2, 0, 0xfedfffff, 0xfef00000, 0x7fffffffff))
	var got []IOVARange
	var ids []uint16
	err := Caps(buf, first, SizeofIOMMUType1Info, func(id, ver uint16, body []byte) error {
		ids = append(ids, id)
		if id == IOMMUTypeCapIOVARange {
			var err error
			got, err = ParseIOVARanges(body)
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []IOVARange{{0, 0xfedfffff}, {0xfef00000, 0x7fffffffff}}
	if !reflect.DeepEqual(got, want) || !reflect.DeepEqual(ids, []uint16{3, IOMMUTypeCapIOVARange}) {
		t.Fatalf("ranges %x ids %v, want %x [3 1]", got, ids, want)
	}
}

func TestCapsSparseMmap(t *testing.T) {
	buf, first := capBuf(32, capHdr(RegionCapSparseMmap, 1, 2, 0, 0x1000, 0x3000, 0x3000))
	var got []SparseArea
	err := Caps(buf, first, SizeofRegionInfo, func(id, _ uint16, body []byte) error {
		var err error
		got, err = ParseSparseMmap(body)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := []SparseArea{{0, 0x1000}, {0x3000, 0x3000}}; !reflect.DeepEqual(got, want) {
		t.Fatalf("areas %x, want %x", got, want)
	}
}

// TestCapsRejectsHostileChains: offsets inside the fixed part, past the
// end, or pointing backwards (a loop) are errors, not hangs or panics.
func TestCapsRejectsHostileChains(t *testing.T) {
	loop, first := capBuf(24, capHdr(1, 1, 0), capHdr(2, 1, 0))
	binary.NativeEndian.PutUint32(loop[first+8+8+4:], first) // second links back to first
	for name, c := range map[string]struct {
		buf   []byte
		first uint32
	}{
		"inside fixed": {make([]byte, 64), 8},
		"past end":     {make([]byte, 64), 60},
		"loop":         {loop, first},
	} {
		n := 0
		err := Caps(c.buf, c.first, 24, func(uint16, uint16, []byte) error { n++; return nil })
		if err == nil {
			t.Errorf("%s: accepted (%d caps)", name, n)
		}
	}
	if _, err := ParseIOVARanges(capHdr(0, 0, 5)[8:]); err == nil {
		t.Error("IOVA ranges: count larger than the body accepted")
	}
	if _, err := ParseIOVARanges(capHdr(0, 0, 1, 10, 5)[8:]); err == nil {
		t.Error("IOVA range with end before start accepted")
	}
	if _, err := ParseSparseMmap([]byte{1, 0, 0}); err == nil {
		t.Error("short sparse mmap body accepted")
	}
}
