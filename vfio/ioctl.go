package vfio

import (
	"encoding/binary"
	"fmt"

	"github.com/vserial/vserial/vfio/internal/vfioabi"
)

// ioctlFunc issues one request: arg is the argument buffer (nil for a
// request that takes its argument by value, val). rawIoctl is the real one;
// tests install a fake kernel.
type ioctlFunc func(fd int, req uint, arg []byte, val uintptr) (int, error)

// vfioSys has one typed method per VFIO request the backend uses (x/sys/unix
// has no VFIO requests; gVisor's abi/linux has the data but would bring
// gVisor in, so the ABI is vfio/internal/vfioabi). Each one
// marshals its structure into a buffer (native byte order, the C layout of
// package vfioabi), calls the chokepoint and decodes the reply.
type vfioSys struct{ ioctl ioctlFunc }

var ne = binary.NativeEndian

// encode marshals a fixed-size ABI structure.
func encode(v any, size uint32) []byte {
	b := make([]byte, size)
	if _, err := binary.Encode(b, ne, v); err != nil {
		panic(fmt.Sprintf("vfio: encode %T: %v", v, err)) // a bug in vfioabi, caught by its tests
	}
	return b
}

func decode(b []byte, v any) {
	if _, err := binary.Decode(b, ne, v); err != nil {
		panic(fmt.Sprintf("vfio: decode %T: %v", v, err))
	}
}

type reqError struct {
	name string
	err  error
}

func (e *reqError) Error() string { return e.name + ": " + e.err.Error() }
func (e *reqError) Unwrap() error { return e.err }

func (s vfioSys) call(name string, fd int, req uint, arg []byte, val uintptr) (int, error) {
	r, err := s.ioctl(fd, req, arg, val)
	if err != nil {
		return r, &reqError{name, err}
	}
	return r, nil
}

// apiVersion is VFIO_GET_API_VERSION on the container.
func (s vfioSys) apiVersion(container int) (int, error) {
	return s.call("VFIO_GET_API_VERSION", container, vfioabi.GetAPIVersion, nil, 0)
}

// checkExtension is VFIO_CHECK_EXTENSION on the container.
func (s vfioSys) checkExtension(container int, ext uintptr) (bool, error) {
	r, err := s.call("VFIO_CHECK_EXTENSION", container, vfioabi.CheckExtension, nil, ext)
	return r > 0, err
}

// setIOMMU is VFIO_SET_IOMMU on the container.
func (s vfioSys) setIOMMU(container int, typ uintptr) error {
	_, err := s.call("VFIO_SET_IOMMU", container, vfioabi.SetIOMMU, nil, typ)
	return err
}

// groupStatus is VFIO_GROUP_GET_STATUS.
func (s vfioSys) groupStatus(group int) (vfioabi.GroupStatus, error) {
	st := vfioabi.GroupStatus{Argsz: vfioabi.SizeofGroupStatus}
	b := encode(&st, vfioabi.SizeofGroupStatus)
	if _, err := s.call("VFIO_GROUP_GET_STATUS", group, vfioabi.GroupGetStatus, b, 0); err != nil {
		return st, err
	}
	decode(b, &st)
	return st, nil
}

// setContainer is VFIO_GROUP_SET_CONTAINER: the argument points to the
// container fd as an int32.
func (s vfioSys) setContainer(group, container int) error {
	b := ne.AppendUint32(nil, uint32(int32(container)))
	_, err := s.call("VFIO_GROUP_SET_CONTAINER", group, vfioabi.GroupSetContainer, b, 0)
	return err
}

// deviceFD is VFIO_GROUP_GET_DEVICE_FD; it returns a new descriptor.
func (s vfioSys) deviceFD(group int, name string) (int, error) {
	b, err := vfioabi.EncodeDeviceName(name)
	if err != nil {
		return -1, err
	}
	return s.call("VFIO_GROUP_GET_DEVICE_FD", group, vfioabi.GroupGetDeviceFD, b, 0)
}

// deviceInfo is VFIO_DEVICE_GET_INFO (without capabilities).
func (s vfioSys) deviceInfo(dev int) (vfioabi.DeviceInfo, error) {
	in := vfioabi.DeviceInfo{Argsz: vfioabi.SizeofDeviceInfo}
	b := encode(&in, vfioabi.SizeofDeviceInfo)
	if _, err := s.call("VFIO_DEVICE_GET_INFO", dev, vfioabi.DeviceGetInfo, b, 0); err != nil {
		return in, err
	}
	decode(b, &in)
	return in, nil
}

// maxInfo bounds the buffer an INFO call may ask for with its capability
// chain: a kernel asking for more is not believed.
const maxInfo = 64 << 10

// infoWithCaps issues an INFO request whose reply may carry a capability
// chain (VIRTIO-NOTES §8.2): fixed is the encoded structure with argsz =
// its size. If the kernel says it needs a larger buffer (argsz grows), it
// asks once more with that size. It returns the reply buffer.
func (s vfioSys) infoWithCaps(name string, fd int, req uint, fixed []byte) ([]byte, error) {
	b := fixed
	if _, err := s.call(name, fd, req, b, 0); err != nil {
		return nil, err
	}
	need := ne.Uint32(b)
	if need <= uint32(len(fixed)) {
		return b, nil
	}
	if need > maxInfo {
		return nil, fmt.Errorf("%s: kernel wants a %d-byte buffer", name, need)
	}
	b = make([]byte, need)
	copy(b, fixed)
	ne.PutUint32(b, need)
	if _, err := s.call(name, fd, req, b, 0); err != nil {
		return nil, err
	}
	return b, nil
}

// regionInfo is VFIO_DEVICE_GET_REGION_INFO for index. When the region has
// capabilities it also returns the whole reply buffer (for vfioabi.Caps).
func (s vfioSys) regionInfo(dev int, index uint32) (vfioabi.RegionInfo, []byte, error) {
	in := vfioabi.RegionInfo{Argsz: vfioabi.SizeofRegionInfo, Index: index}
	b, err := s.infoWithCaps("VFIO_DEVICE_GET_REGION_INFO", dev, vfioabi.DeviceGetRegion, encode(&in, vfioabi.SizeofRegionInfo))
	if err != nil {
		return in, nil, err
	}
	decode(b, &in)
	if in.Flags&vfioabi.RegionFlagCaps == 0 || in.CapOffset == 0 {
		return in, nil, nil
	}
	return in, b, nil
}

// irqInfo is VFIO_DEVICE_GET_IRQ_INFO for index.
func (s vfioSys) irqInfo(dev int, index uint32) (vfioabi.IRQInfo, error) {
	in := vfioabi.IRQInfo{Argsz: vfioabi.SizeofIRQInfo, Index: index}
	b := encode(&in, vfioabi.SizeofIRQInfo)
	if _, err := s.call("VFIO_DEVICE_GET_IRQ_INFO", dev, vfioabi.DeviceGetIRQInfo, b, 0); err != nil {
		return in, err
	}
	decode(b, &in)
	return in, nil
}

// setIRQs is VFIO_DEVICE_SET_IRQS: eventfds for vectors start.. of index,
// or (no fds) disable the index.
func (s vfioSys) setIRQs(dev int, index, start uint32, fds []int32) error {
	_, err := s.call("VFIO_DEVICE_SET_IRQS", dev, vfioabi.DeviceSetIRQs, vfioabi.EncodeIRQSet(index, start, fds), 0)
	return err
}

// iommuInfo is VFIO_IOMMU_GET_INFO on a type1 container, with the
// capability chain (IOVA ranges) when the kernel has one.
func (s vfioSys) iommuInfo(container int) (vfioabi.IOMMUType1Info, []byte, error) {
	in := vfioabi.IOMMUType1Info{Argsz: vfioabi.SizeofIOMMUType1Info}
	b, err := s.infoWithCaps("VFIO_IOMMU_GET_INFO", container, vfioabi.IOMMUGetInfo, encode(&in, vfioabi.SizeofIOMMUType1Info))
	if err != nil {
		return in, nil, err
	}
	decode(b, &in)
	if in.Flags&vfioabi.IOMMUInfoCaps == 0 || in.CapOffset == 0 {
		return in, nil, nil
	}
	return in, b, nil
}

// mapDMA is VFIO_IOMMU_MAP_DMA: size bytes at vaddr become readable and
// writable by the device at iova (the pages are pinned).
func (s vfioSys) mapDMA(container int, vaddr, iova, size uint64) error {
	m := vfioabi.DMAMap{
		Argsz: vfioabi.SizeofDMAMap,
		Flags: vfioabi.DMAMapFlagRead | vfioabi.DMAMapFlagWrite,
		Vaddr: vaddr, IOVA: iova, Size: size,
	}
	_, err := s.call("VFIO_IOMMU_MAP_DMA", container, vfioabi.IOMMUMapDMA, encode(&m, vfioabi.SizeofDMAMap), 0)
	return err
}

// unmapDMA is VFIO_IOMMU_UNMAP_DMA; it returns how many bytes the kernel
// unmapped (it writes that back into size).
func (s vfioSys) unmapDMA(container int, iova, size uint64) (uint64, error) {
	u := vfioabi.DMAUnmap{Argsz: vfioabi.SizeofDMAUnmap, IOVA: iova, Size: size}
	b := encode(&u, vfioabi.SizeofDMAUnmap)
	if _, err := s.call("VFIO_IOMMU_UNMAP_DMA", container, vfioabi.IOMMUUnmapDMA, b, 0); err != nil {
		return 0, err
	}
	decode(b, &u)
	return u.Size, nil
}
