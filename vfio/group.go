package vfio

// IOMMU groups: VFIO gives a whole group to one user, so every member is
// checked before the group is opened; then the container/group flow.

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/vserial/vserial/pciscan"
	"github.com/vserial/vserial/vfio/internal/vfioabi"
	"golang.org/x/sys/unix"
)

// GroupMember is one function of an IOMMU group as sysfs describes it.
type GroupMember struct {
	Addr   string
	Driver string // "" when unbound
	Class  uint32
}

// ReadGroup lists the functions of IOMMU group group
// (SYSFS/kernel/iommu_groups/GROUP/devices).
func ReadGroup(sysfs, group string) ([]GroupMember, error) {
	if group == "" || strings.ContainsAny(group, "/\x00") || group == "." || group == ".." {
		return nil, fmt.Errorf("malformed IOMMU group %q", group)
	}
	dir := filepath.Join(sysfs, "kernel", "iommu_groups", group, "devices")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []GroupMember
	for _, e := range ents {
		f, err := pciscan.Lookup(sysfs, e.Name())
		if err != nil {
			return nil, fmt.Errorf("IOMMU group %s: %w", group, err)
		}
		out = append(out, GroupMember{Addr: f.Addr, Driver: f.Driver, Class: f.Class})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Addr < out[j].Addr })
	return out, nil
}

// CheckGroup decides whether the function at addr may be used through its
// IOMMU group: VFIO hands the whole group to one user, and every device in
// it shares one IOMMU mapping. Besides addr, the group may only hold PCI
// bridges (vfio-pci ignores them) and functions that no driver holds or
// that are bound to vfio-pci too (we own them for as long as the group is
// open; nothing else can use them). A function held by any other driver is
// refused with an error naming it.
func CheckGroup(addr, group string, members []GroupMember) error {
	found := false
	var bad []string
	for _, m := range members {
		switch {
		case m.Addr == addr:
			found = true
		case m.Class>>8 == 0x0604: // PCI-to-PCI bridge
		case m.Driver == "" || m.Driver == Driver:
		default:
			bad = append(bad, fmt.Sprintf("%s (bound to %s)", m.Addr, m.Driver))
		}
	}
	if !found {
		return fmt.Errorf("IOMMU group %s does not list %s", group, addr)
	}
	if len(bad) > 0 {
		return fmt.Errorf("%w: IOMMU group %s also holds %s; VFIO gives a whole group to one user, so every other device in it must be unbound or bound to vfio-pci (or use --bind uio)",
			ErrGroupShared, group, strings.Join(bad, ", "))
	}
	return nil
}

// groupNode finds the group's character device: /dev/vfio/GROUP (behind an
// IOMMU) or /dev/vfio/noiommu-GROUP (no-IOMMU mode).
func groupNode(dev, group string) (node string, noIOMMU bool, err error) {
	p := filepath.Join(dev, "vfio", group)
	if _, err := os.Stat(p); err == nil {
		return p, false, nil
	}
	q := filepath.Join(dev, "vfio", "noiommu-"+group)
	if _, err := os.Stat(q); err == nil {
		return q, true, nil
	}
	return "", false, fmt.Errorf("%w: neither %s nor %s exists (is devtmpfs mounted on %s?)", ErrNoGroup, p, q, dev)
}

// attach runs the container/group flow of VIRTIO-NOTES §8.5/§8.6: open the
// container, check the API version and the IOMMU extension, open the group,
// check it is viable, put it in the container and set the IOMMU type.
func (f *Function) attach(dev, node string) error {
	cpath := filepath.Join(dev, "vfio", "vfio")
	fd, err := unix.Open(cpath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: cpath, Err: err}
	}
	f.container = fd
	v, err := f.sys.apiVersion(fd)
	if err != nil {
		return err
	}
	if v != vfioabi.APIVersion {
		return fmt.Errorf("VFIO API version %d, want %d", v, vfioabi.APIVersion)
	}
	typ := uintptr(vfioabi.Type1v2IOMMU)
	if f.noIOMMU {
		typ = vfioabi.NoIOMMU
		if ok, err := f.sys.checkExtension(fd, typ); err != nil || !ok {
			return fmt.Errorf("the VFIO container does not offer no-IOMMU mode (vfio loaded without enable_unsafe_noiommu_mode=1?): %v", err)
		}
	} else if ok, err := f.sys.checkExtension(fd, typ); err != nil || !ok {
		typ = vfioabi.Type1IOMMU
		if ok, err := f.sys.checkExtension(fd, typ); err != nil || !ok {
			return fmt.Errorf("the VFIO container offers no type1 IOMMU (vfio_iommu_type1 not loaded?): %v", err)
		}
	}
	gfd, err := unix.Open(node, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("open %s: the group is in use by another process (VFIO allows one user per group)", node)
		}
		if errors.Is(err, unix.EPERM) && f.noIOMMU {
			return fmt.Errorf("open %s: %w (no-IOMMU mode needs CAP_SYS_RAWIO)", node, err)
		}
		return &os.PathError{Op: "open", Path: node, Err: err}
	}
	f.groupFD = gfd
	st, err := f.sys.groupStatus(gfd)
	if err != nil {
		return err
	}
	if st.Flags&vfioabi.GroupFlagsViable == 0 {
		return fmt.Errorf("%w: IOMMU group %s is not viable: some device in it is bound to a driver other than vfio-pci", ErrGroupShared, f.group)
	}
	if err := f.sys.setContainer(gfd, f.container); err != nil {
		return err
	}
	if err := f.sys.setIOMMU(f.container, typ); err != nil {
		return err
	}
	return nil
}
