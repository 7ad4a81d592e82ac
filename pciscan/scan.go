package pciscan

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// Sentinel errors callers branch on.
var (
	// ErrNoDevice: no function with that address exists.
	ErrNoDevice = errors.New("no such PCI function")
	// ErrBadAddr: the address is not of the form DDDD:BB:DD.F.
	ErrBadAddr = errors.New("malformed PCI address")
	// ErrHeld: another kernel driver holds the function and force was not
	// given. The error is a *HeldError naming the driver.
	ErrHeld = errors.New("function held by another driver")
	// ErrNoDriver: the target driver is not registered with the PCI bus
	// (its module is not loaded).
	ErrNoDriver = errors.New("driver not registered")
	// ErrMalformed: a sysfs file has unexpected content.
	ErrMalformed = errors.New("malformed sysfs file")
)

// HeldError is returned by Take (without force) for a function that another driver holds.
type HeldError struct {
	Driver string
}

func (e *HeldError) Error() string {
	return fmt.Sprintf("held by %s; name it with --device to take it", e.Driver)
}

// Is makes errors.Is(err, ErrHeld) true.
func (e *HeldError) Is(target error) bool { return target == ErrHeld }

// Function is one PCI function as sysfs describes it.
type Function struct {
	Addr      string // canonical address, e.g. "0000:00:03.0"
	Vendor    uint16
	Device    uint16
	SubVendor uint16
	SubDevice uint16
	Revision  uint8
	// Class is the 24-bit class code as sysfs shows it: base class << 16 |
	// subclass << 8 | programming interface (0x078000 for virtio-serial).
	Class      uint32
	Driver     string // basename of the driver symlink; "" if unbound
	IOMMUGroup string // basename of the iommu_group symlink; "" if none
	Path       string // the function's directory in sysfs
}

func (f Function) String() string {
	d := f.Driver
	if d == "" {
		d = "no driver"
	}
	return fmt.Sprintf("%s [%04x:%04x] sub [%04x:%04x] rev %02x class %06x (%s)",
		f.Addr, f.Vendor, f.Device, f.SubVendor, f.SubDevice, f.Revision, f.Class, d)
}

// Virtio identifiers (VIRTIO-NOTES §1).
const (
	VendorVirtio           = 0x1af4
	DeviceConsoleLegacy    = 0x1003 // transitional
	DeviceConsoleModern    = 0x1043 // 0x1040 + virtio device ID 3
	SubDeviceConsoleLegacy = 3      // transitional devices name their type here
)

// IsConsole reports whether f is a virtio console (virtio-serial) function.
func IsConsole(f Function) bool {
	if f.Vendor != VendorVirtio {
		return false
	}
	return f.Device == DeviceConsoleModern ||
		(f.Device == DeviceConsoleLegacy && f.SubDevice == SubDeviceConsoleLegacy)
}

// addrRE is the canonical sysfs name of a function: domain (4 hex digits,
// more on hosts with large domain numbers such as VMD), bus, device (0-1f),
// function (0-7).
var addrRE = regexp.MustCompile(`^[0-9a-f]{4,8}:[0-9a-f]{2}:[01][0-9a-f]\.[0-7]$`)

// ParseAddr checks a user-supplied address and returns its canonical form:
// lower case, with domain 0000 added when only BB:DD.F was given.
func ParseAddr(s string) (string, error) {
	a := strings.ToLower(strings.TrimSpace(s))
	if strings.Count(a, ":") == 1 {
		a = "0000:" + a
	}
	if !addrRE.MatchString(a) {
		return "", fmt.Errorf("pciscan: %q: %w (want DDDD:BB:DD.F, e.g. 0000:00:03.0)", s, ErrBadAddr)
	}
	return a, nil
}

func devicesDir(sysfs string) string { return filepath.Join(sysfs, "bus", "pci", "devices") }

// Scan returns every function under sysfs/bus/pci/devices, sorted by address.
// A function that disappears while it is being read (hot-unplug) is left out;
// any other unreadable or malformed file fails the scan with an error naming
// the file.
func Scan(sysfs string) ([]Function, error) {
	dir := devicesDir(sysfs)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("pciscan: scan: %w", err)
	}
	var fns []Function
	for _, e := range ents {
		if !addrRE.MatchString(e.Name()) {
			return nil, fmt.Errorf("pciscan: scan: %w: unexpected entry %s", ErrMalformed, filepath.Join(dir, e.Name()))
		}
		f, err := read(dir, e.Name())
		if errors.Is(err, ErrNoDevice) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("pciscan: scan: %w", err)
		}
		fns = append(fns, f)
	}
	sort.Slice(fns, func(i, j int) bool { return fns[i].Addr < fns[j].Addr })
	return fns, nil
}

// Lookup reads the one function at addr.
func Lookup(sysfs, addr string) (Function, error) {
	a, err := ParseAddr(addr)
	if err != nil {
		return Function{}, err
	}
	f, err := read(devicesDir(sysfs), a)
	if err != nil {
		return Function{}, fmt.Errorf("pciscan: lookup %s: %w", a, err)
	}
	return f, nil
}

// read parses the function directory dir/addr; addr must already be valid.
func read(dir, addr string) (Function, error) {
	p := filepath.Join(dir, addr)
	if _, err := os.Stat(p); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return Function{}, fmt.Errorf("%w: %s", ErrNoDevice, p)
		}
		return Function{}, err
	}
	f := Function{Addr: addr, Path: p}
	var err error
	hex16 := func(name string, dst *uint16) {
		if err == nil {
			var v uint64
			v, err = readHex(p, name, 16)
			*dst = uint16(v)
		}
	}
	hex16("vendor", &f.Vendor)
	hex16("device", &f.Device)
	hex16("subsystem_vendor", &f.SubVendor)
	hex16("subsystem_device", &f.SubDevice)
	if err == nil {
		var v uint64
		v, err = readHex(p, "revision", 8)
		f.Revision = uint8(v)
	}
	if err == nil {
		var v uint64
		v, err = readHex(p, "class", 24)
		f.Class = uint32(v)
	}
	if err == nil {
		f.Driver, err = linkBase(p, "driver")
	}
	if err == nil {
		f.IOMMUGroup, err = linkBase(p, "iommu_group")
	}
	if err != nil {
		// The directory going away under us means the function was unplugged.
		if _, serr := os.Stat(p); errors.Is(serr, os.ErrNotExist) {
			return Function{}, fmt.Errorf("%w: %s", ErrNoDevice, p)
		}
		return Function{}, err
	}
	return f, nil
}

// readHex parses dir/name, which must hold exactly "0x" followed by hex
// digits that fit in bits, and an optional trailing newline.
func readHex(dir, name string, bits int) (uint64, error) {
	path := filepath.Join(dir, name)
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	s := strings.TrimSuffix(string(b), "\n")
	digits, ok := strings.CutPrefix(s, "0x")
	if !ok || digits == "" || len(digits) > (bits+3)/4 {
		return 0, fmt.Errorf("%w: %s: %q is not a %d-bit 0x hex number", ErrMalformed, path, s, bits)
	}
	v, err := strconv.ParseUint(digits, 16, bits)
	if err != nil {
		return 0, fmt.Errorf("%w: %s: %q is not a %d-bit 0x hex number", ErrMalformed, path, s, bits)
	}
	return v, nil
}

// linkBase returns the basename of the symlink dir/name's target, or "" if
// there is no such link.
func linkBase(dir, name string) (string, error) {
	t, err := os.Readlink(filepath.Join(dir, name))
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	return filepath.Base(t), nil
}

// ModuleLoaded reports whether sysfs/module/name exists, i.e. the module is
// loaded (or built in with parameters). Dashes in name are treated as
// underscores, as the kernel does.
func ModuleLoaded(sysfs, name string) bool {
	name = strings.ReplaceAll(name, "-", "_")
	if !validName(name) {
		return false
	}
	_, err := os.Stat(filepath.Join(sysfs, "module", name))
	return err == nil
}

// DriverRegistered reports whether a PCI driver of that name is registered
// (sysfs/bus/pci/drivers/driver exists). Note driver and module names differ:
// module virtio_pci registers driver "virtio-pci".
func DriverRegistered(sysfs, driver string) bool {
	if !validName(driver) {
		return false
	}
	st, err := os.Stat(filepath.Join(sysfs, "bus", "pci", "drivers", driver))
	return err == nil && st.IsDir()
}

// validName accepts driver and module names: no path separators, not "." or
// "..", printable ASCII.
func validName(s string) bool {
	if s == "" || s == "." || s == ".." || len(s) > 64 {
		return false
	}
	for _, c := range s {
		if c <= ' ' || c > '~' || c == '/' {
			return false
		}
	}
	return true
}
