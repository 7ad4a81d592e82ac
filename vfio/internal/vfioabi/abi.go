// Package vfioabi is the VFIO user ABI (include/uapi/linux/vfio.h) as Go
// data: request numbers, flag and index constants, and structures laid out
// exactly like their C counterparts, plus the encoders for the two requests
// whose argument is not a fixed structure (VFIO_DEVICE_SET_IRQS and
// VFIO_GROUP_GET_DEVICE_FD). It issues no system calls; package vfio does,
// through one chokepoint. Each structure names its C struct; abi_test.go
// checks sizes and field offsets against VIRTIO-NOTES §8.2, which were taken
// from the 6.1 uapi header.
//
// Request numbers assume the generic ioctl encoding (x86-64, arm64,
// riscv64), where _IO(';', 100+n) is 0x3B00|(100+n); no size or direction
// is encoded, the size travels in each structure's Argsz.
package vfioabi

import (
	"encoding/binary"
	"fmt"
)

// ioType is VFIO_TYPE, the ioctl "magic" ';'; requests are VFIO_BASE + n.
const (
	ioType = ';'
	base   = 100
)

func io(n uint) uint { return ioType<<8 | (base + n) }

// Request numbers (VIRTIO-NOTES §8.1). Numbers are reused across fd kinds:
// issue each on the fd named in its comment.
var (
	GetAPIVersion       = io(0)  // VFIO_GET_API_VERSION, container fd, no argument
	CheckExtension      = io(1)  // VFIO_CHECK_EXTENSION, container fd, extension id by value
	SetIOMMU            = io(2)  // VFIO_SET_IOMMU, container fd, IOMMU type by value
	GroupGetStatus      = io(3)  // VFIO_GROUP_GET_STATUS, group fd, *GroupStatus
	GroupSetContainer   = io(4)  // VFIO_GROUP_SET_CONTAINER, group fd, *int32 container fd
	GroupUnsetContainer = io(5)  // VFIO_GROUP_UNSET_CONTAINER, group fd, no argument
	GroupGetDeviceFD    = io(6)  // VFIO_GROUP_GET_DEVICE_FD, group fd, NUL-terminated name
	DeviceGetInfo       = io(7)  // VFIO_DEVICE_GET_INFO, device fd, *DeviceInfo
	DeviceGetRegion     = io(8)  // VFIO_DEVICE_GET_REGION_INFO, device fd, *RegionInfo
	DeviceGetIRQInfo    = io(9)  // VFIO_DEVICE_GET_IRQ_INFO, device fd, *IRQInfo
	DeviceSetIRQs       = io(10) // VFIO_DEVICE_SET_IRQS, device fd, IRQSet header + data
	DeviceReset         = io(11) // VFIO_DEVICE_RESET, device fd, no argument
	IOMMUGetInfo        = io(12) // VFIO_IOMMU_GET_INFO, container fd, *IOMMUType1Info
	IOMMUMapDMA         = io(13) // VFIO_IOMMU_MAP_DMA, container fd, *DMAMap
	IOMMUUnmapDMA       = io(14) // VFIO_IOMMU_UNMAP_DMA, container fd, *DMAUnmap
)

// APIVersion is VFIO_API_VERSION, what GetAPIVersion must return.
const APIVersion = 0

// Extension and IOMMU type ids (VFIO_CHECK_EXTENSION, VFIO_SET_IOMMU).
const (
	Type1IOMMU   = 1 // VFIO_TYPE1_IOMMU
	Type1v2IOMMU = 3 // VFIO_TYPE1v2_IOMMU, preferred
	NoIOMMU      = 8 // VFIO_NOIOMMU_IOMMU
)

// GroupStatus is struct vfio_group_status.
type GroupStatus struct {
	Argsz uint32
	Flags uint32
}

// GroupStatus flags.
const (
	GroupFlagsViable       = 1 << 0 // VFIO_GROUP_FLAGS_VIABLE
	GroupFlagsContainerSet = 1 << 1 // VFIO_GROUP_FLAGS_CONTAINER_SET
)

// DeviceInfo is struct vfio_device_info (with the trailing pad newer
// headers carry; the kernel accepts argsz ≥ 16).
type DeviceInfo struct {
	Argsz      uint32
	Flags      uint32
	NumRegions uint32
	NumIRQs    uint32
	CapOffset  uint32
	Pad        uint32
}

// DeviceInfo flags.
const (
	DeviceFlagsReset = 1 << 0 // VFIO_DEVICE_FLAGS_RESET
	DeviceFlagsPCI   = 1 << 1 // VFIO_DEVICE_FLAGS_PCI
)

// RegionInfo is struct vfio_region_info.
type RegionInfo struct {
	Argsz     uint32
	Flags     uint32
	Index     uint32
	CapOffset uint32
	Size      uint64
	Offset    uint64
}

// RegionInfo flags.
const (
	RegionFlagRead  = 1 << 0 // VFIO_REGION_INFO_FLAG_READ
	RegionFlagWrite = 1 << 1 // VFIO_REGION_INFO_FLAG_WRITE
	RegionFlagMmap  = 1 << 2 // VFIO_REGION_INFO_FLAG_MMAP
	RegionFlagCaps  = 1 << 3 // VFIO_REGION_INFO_FLAG_CAPS
)

// Region capability ids.
const (
	RegionCapSparseMmap   = 1 // VFIO_REGION_INFO_CAP_SPARSE_MMAP
	RegionCapType         = 2 // VFIO_REGION_INFO_CAP_TYPE
	RegionCapMSIXMappable = 3 // VFIO_REGION_INFO_CAP_MSIX_MAPPABLE
)

// vfio-pci region indexes (VIRTIO-NOTES §8.3).
const (
	PCIBAR0Region   = 0 // VFIO_PCI_BAR0_REGION_INDEX; BAR i is region i
	PCIBAR5Region   = 5
	PCIROMRegion    = 6 // VFIO_PCI_ROM_REGION_INDEX
	PCIConfigRegion = 7 // VFIO_PCI_CONFIG_REGION_INDEX
)

// IRQInfo is struct vfio_irq_info.
type IRQInfo struct {
	Argsz uint32
	Flags uint32
	Index uint32
	Count uint32
}

// IRQInfo flags.
const (
	IRQInfoEventfd    = 1 << 0 // VFIO_IRQ_INFO_EVENTFD
	IRQInfoMaskable   = 1 << 1 // VFIO_IRQ_INFO_MASKABLE
	IRQInfoAutomasked = 1 << 2 // VFIO_IRQ_INFO_AUTOMASKED
	IRQInfoNoresize   = 1 << 3 // VFIO_IRQ_INFO_NORESIZE
)

// vfio-pci IRQ indexes.
const (
	PCIINTxIRQ = 0 // VFIO_PCI_INTX_IRQ_INDEX
	PCIMSIIRQ  = 1 // VFIO_PCI_MSI_IRQ_INDEX
	PCIMSIXIRQ = 2 // VFIO_PCI_MSIX_IRQ_INDEX
	PCIErrIRQ  = 3 // VFIO_PCI_ERR_IRQ_INDEX
	PCIReqIRQ  = 4 // VFIO_PCI_REQ_IRQ_INDEX: the kernel asks for the device back
)

// IRQSet is the fixed part of struct vfio_irq_set; the data (bools or
// int32 eventfds) follows it directly. EncodeIRQSet builds the whole
// argument.
type IRQSet struct {
	Argsz uint32
	Flags uint32
	Index uint32
	Start uint32
	Count uint32
}

// IRQSet flags.
const (
	IRQSetDataNone      = 1 << 0 // VFIO_IRQ_SET_DATA_NONE
	IRQSetDataBool      = 1 << 1 // VFIO_IRQ_SET_DATA_BOOL
	IRQSetDataEventfd   = 1 << 2 // VFIO_IRQ_SET_DATA_EVENTFD
	IRQSetActionMask    = 1 << 3 // VFIO_IRQ_SET_ACTION_MASK
	IRQSetActionUnmask  = 1 << 4 // VFIO_IRQ_SET_ACTION_UNMASK
	IRQSetActionTrigger = 1 << 5 // VFIO_IRQ_SET_ACTION_TRIGGER
)

// IOMMUType1Info is struct vfio_iommu_type1_info.
type IOMMUType1Info struct {
	Argsz       uint32
	Flags       uint32
	IOVAPgsizes uint64
	CapOffset   uint32
	Pad         uint32
}

// IOMMUType1Info flags and capability ids.
const (
	IOMMUInfoPgsizes      = 1 << 0 // VFIO_IOMMU_INFO_PGSIZES
	IOMMUInfoCaps         = 1 << 1 // VFIO_IOMMU_INFO_CAPS
	IOMMUTypeCapIOVARange = 1      // VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE
)

// DMAMap is struct vfio_iommu_type1_dma_map.
type DMAMap struct {
	Argsz uint32
	Flags uint32
	Vaddr uint64
	IOVA  uint64
	Size  uint64
}

// DMAMap flags.
const (
	DMAMapFlagRead  = 1 << 0 // VFIO_DMA_MAP_FLAG_READ
	DMAMapFlagWrite = 1 << 1 // VFIO_DMA_MAP_FLAG_WRITE
)

// DMAUnmap is struct vfio_iommu_type1_dma_unmap (without the flexible data).
type DMAUnmap struct {
	Argsz uint32
	Flags uint32
	IOVA  uint64
	Size  uint64
}

// InfoCapHeader is struct vfio_info_cap_header. Next is the offset of the
// next capability from the start of the info buffer, 0 at the end.
type InfoCapHeader struct {
	ID      uint16
	Version uint16
	Next    uint32
}

// Sizes of the structures, as the kernel expects them in Argsz (the C
// sizes; abi_test.go checks the Go structures match).
const (
	SizeofGroupStatus    uint32 = 8
	SizeofDeviceInfo     uint32 = 24
	SizeofRegionInfo     uint32 = 32
	SizeofIRQInfo        uint32 = 16
	SizeofIRQSet         uint32 = 20 // header only
	SizeofIOMMUType1Info uint32 = 24
	SizeofDMAMap         uint32 = 32
	SizeofDMAUnmap       uint32 = 24
	SizeofInfoCapHeader  uint32 = 8
)

// EncodeIRQSet builds the argument of VFIO_DEVICE_SET_IRQS that routes
// vectors start..start+len(fds)-1 of index to the given eventfds
// (DATA_EVENTFD|ACTION_TRIGGER; -1 leaves a vector unassigned). With no
// fds it builds the DATA_NONE|ACTION_TRIGGER form with count 0, which
// disables the whole index.
func EncodeIRQSet(index, start uint32, fds []int32) []byte {
	hdr := IRQSet{Index: index, Start: start, Count: uint32(len(fds))}
	if len(fds) == 0 {
		hdr.Flags = IRQSetDataNone | IRQSetActionTrigger
	} else {
		hdr.Flags = IRQSetDataEventfd | IRQSetActionTrigger
	}
	hdr.Argsz = SizeofIRQSet + 4*uint32(len(fds))
	b := make([]byte, hdr.Argsz)
	ne := binary.NativeEndian
	ne.PutUint32(b[0:], hdr.Argsz)
	ne.PutUint32(b[4:], hdr.Flags)
	ne.PutUint32(b[8:], hdr.Index)
	ne.PutUint32(b[12:], hdr.Start)
	ne.PutUint32(b[16:], hdr.Count)
	for i, fd := range fds {
		ne.PutUint32(b[20+4*i:], uint32(fd))
	}
	return b
}

// EncodeDeviceName builds the NUL-terminated device name that
// VFIO_GROUP_GET_DEVICE_FD takes. It rejects names with a NUL byte.
func EncodeDeviceName(name string) ([]byte, error) {
	for i := 0; i < len(name); i++ {
		if name[i] == 0 {
			return nil, fmt.Errorf("vfio: device name %q contains a NUL byte", name)
		}
	}
	if name == "" {
		return nil, fmt.Errorf("vfio: empty device name")
	}
	return append([]byte(name), 0), nil
}

// IOVARange is one usable range [Start, End] (inclusive) from the
// VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE capability.
type IOVARange struct{ Start, End uint64 }

// SparseArea is one mmap-able piece of a region from the
// VFIO_REGION_INFO_CAP_SPARSE_MMAP capability, relative to the region.
type SparseArea struct{ Offset, Size uint64 }

// Caps walks the capability chain of an info buffer (the kernel's reply to
// a GET_INFO call with a buffer larger than the fixed structure), starting
// at first, and calls fn with each capability's id, version and body (the
// bytes after its header, up to the next capability or the buffer's end).
// It rejects offsets that point outside the buffer, overlap a header or go
// backwards (which would loop).
func Caps(buf []byte, first uint32, fixed uint32, fn func(id, version uint16, body []byte) error) error {
	off := first
	for off != 0 {
		if off < fixed || off%4 != 0 || uint64(off)+uint64(SizeofInfoCapHeader) > uint64(len(buf)) {
			return fmt.Errorf("vfio: capability at %d outside the %d-byte info buffer", off, len(buf))
		}
		ne := binary.NativeEndian
		id, ver, next := ne.Uint16(buf[off:]), ne.Uint16(buf[off+2:]), ne.Uint32(buf[off+4:])
		end := uint32(len(buf))
		if next != 0 {
			if next <= off || next < off+SizeofInfoCapHeader || next > end {
				return fmt.Errorf("vfio: capability at %d links to %d", off, next)
			}
			end = next
		}
		if err := fn(id, ver, buf[off+SizeofInfoCapHeader:end]); err != nil {
			return err
		}
		off = next
	}
	return nil
}

// ParseIOVARanges decodes the body of an IOVA_RANGE capability:
// nr_iovas u32, reserved u32, then nr_iovas × {start u64, end u64}.
func ParseIOVARanges(body []byte) ([]IOVARange, error) {
	if len(body) < 8 {
		return nil, fmt.Errorf("vfio: IOVA range capability: %d bytes", len(body))
	}
	ne := binary.NativeEndian
	n := ne.Uint32(body)
	if uint64(n)*16 > uint64(len(body)-8) {
		return nil, fmt.Errorf("vfio: IOVA range capability: %d ranges in %d bytes", n, len(body))
	}
	rs := make([]IOVARange, n)
	for i := range rs {
		p := body[8+16*i:]
		rs[i] = IOVARange{Start: ne.Uint64(p), End: ne.Uint64(p[8:])}
		if rs[i].End < rs[i].Start {
			return nil, fmt.Errorf("vfio: IOVA range %d: end %#x before start %#x", i, rs[i].End, rs[i].Start)
		}
	}
	return rs, nil
}

// ParseSparseMmap decodes the body of a SPARSE_MMAP capability:
// nr_areas u32, reserved u32, then nr_areas × {offset u64, size u64}.
func ParseSparseMmap(body []byte) ([]SparseArea, error) {
	if len(body) < 8 {
		return nil, fmt.Errorf("vfio: sparse mmap capability: %d bytes", len(body))
	}
	ne := binary.NativeEndian
	n := ne.Uint32(body)
	if uint64(n)*16 > uint64(len(body)-8) {
		return nil, fmt.Errorf("vfio: sparse mmap capability: %d areas in %d bytes", n, len(body))
	}
	as := make([]SparseArea, n)
	for i := range as {
		p := body[8+16*i:]
		as[i] = SparseArea{Offset: ne.Uint64(p), Size: ne.Uint64(p[8:])}
	}
	return as, nil
}
