package vfio

// The device fd's regions: configuration space and the BARs.

import (
	"fmt"
	"os"

	"github.com/vserial/vserial/internal/rawio"
	"github.com/vserial/vserial/uio"
	"github.com/vserial/vserial/vfio/internal/vfioabi"
	"golang.org/x/sys/unix"
)

// configFile is configuration space as the VFIO config region: pread
// and pwrite of exactly the asked length at the region's offset in the
// device fd (vfio-pci virtualizes parts of it, VIRTIO-NOTES §8.3).
type configFile struct {
	fd         int
	base, size int64
}

func (c configFile) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off > c.size-int64(len(p)) {
		return 0, fmt.Errorf("%w: %d bytes at %#x (config region is %#x bytes)", uio.ErrBadAccess, len(p), off, c.size)
	}
	n, e := rawio.Pread(c.fd, p, c.base+off)
	err := rawio.Err(e)
	if err == nil && n != len(p) {
		err = fmt.Errorf("short read: %d of %d bytes", n, len(p))
	}
	return n, err
}

func (c configFile) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off > c.size-int64(len(p)) {
		return 0, fmt.Errorf("%w: %d bytes at %#x (config region is %#x bytes)", uio.ErrBadAccess, len(p), off, c.size)
	}
	n, e := rawio.Pwrite(c.fd, p, c.base+off)
	err := rawio.Err(e)
	if err == nil && n != len(p) {
		err = fmt.Errorf("short write: %d of %d bytes", n, len(p))
	}
	return n, err
}

// Close does nothing: the device fd belongs to the Function.
func (configFile) Close() error { return nil }

// openDevice gets the device fd, checks it is a PCI device with the
// regions and interrupts vfio-pci has, and opens configuration space.
func (f *Function) openDevice() error {
	fd, err := f.sys.deviceFD(f.groupFD, f.addr)
	if err != nil {
		return err
	}
	f.devFD = fd
	info, err := f.sys.deviceInfo(fd)
	if err != nil {
		return err
	}
	if info.Flags&vfioabi.DeviceFlagsPCI == 0 || info.NumRegions <= vfioabi.PCIConfigRegion || info.NumIRQs <= vfioabi.PCIMSIXIRQ {
		return fmt.Errorf("not a vfio-pci device: flags %#x, %d regions, %d irqs", info.Flags, info.NumRegions, info.NumIRQs)
	}
	ri, _, err := f.sys.regionInfo(fd, vfioabi.PCIConfigRegion)
	if err != nil {
		return err
	}
	if ri.Size < 64 || ri.Size > 4096 || ri.Flags&(vfioabi.RegionFlagRead|vfioabi.RegionFlagWrite) != vfioabi.RegionFlagRead|vfioabi.RegionFlagWrite || ri.Offset > 1<<62 {
		return fmt.Errorf("config region: size %#x flags %#x offset %#x", ri.Size, ri.Flags, ri.Offset)
	}
	f.cfg = uio.NewConfig(configFile{fd: fd, base: int64(ri.Offset), size: int64(ri.Size)})
	return nil
}

func (f *Function) openBAR(i int) (*uio.BAR, error) {
	ri, caps, err := f.sys.regionInfo(f.devFD, uint32(i))
	if err != nil {
		return nil, err
	}
	if ri.Size == 0 {
		return nil, uio.ErrNoBAR
	}
	if ri.Offset > 1<<62 || ri.Size > 1<<40 {
		return nil, fmt.Errorf("region %d: offset %#x size %#x out of range", i, ri.Offset, ri.Size)
	}
	var res uio.Resource
	if i < len(f.res) {
		res = f.res[i]
	}
	whole := ri.Flags&vfioabi.RegionFlagMmap != 0
	if whole && caps != nil {
		err := vfioabi.Caps(caps, ri.CapOffset, vfioabi.SizeofRegionInfo, func(id, _ uint16, body []byte) error {
			if id != vfioabi.RegionCapSparseMmap {
				return nil
			}
			areas, err := vfioabi.ParseSparseMmap(body)
			if err != nil {
				return err
			}
			// Only a single area covering the region is mapped; other
			// layouts (the MSI-X table carved out) go through pread.
			whole = len(areas) == 1 && areas[0].Offset == 0 && areas[0].Size >= ri.Size
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	if whole {
		page := uint64(os.Getpagesize())
		n := (ri.Size + page - 1) &^ (page - 1)
		m, err := unix.Mmap(f.devFD, int64(ri.Offset), int(n), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err == nil {
			return uio.MappedBAR(i, res, ri.Size, m), nil
		}
		f.log.Warn("vfio: cannot map uio.BAR, using read/write", "bar", i, "err", err)
	}
	if ri.Flags&(vfioabi.RegionFlagRead|vfioabi.RegionFlagWrite) != vfioabi.RegionFlagRead|vfioabi.RegionFlagWrite {
		return nil, fmt.Errorf("region %d is neither mappable nor readable and writable (flags %#x)", i, ri.Flags)
	}
	return uio.FileBAR(i, res, ri.Size, f.devFD, int64(ri.Offset)), nil
}
