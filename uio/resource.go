package uio

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Resource flag bits as printed in the sysfs resource file
// (include/linux/ioport.h).
const (
	resourceIO       = 0x100
	resourceMem      = 0x200
	resourcePrefetch = 0x2000
	resourceMem64    = 0x100000
)

// Resource is one line of /sys/bus/pci/devices/ADDR/resource: the host's
// view of a BAR (lines 0-5), the expansion ROM (6) and bridge windows.
type Resource struct {
	Start, End, Flags uint64
}

// IO reports an I/O-port BAR.
func (r Resource) IO() bool { return r.Flags&resourceIO != 0 && r.present() }

// Mem reports a memory BAR.
func (r Resource) Mem() bool { return r.Flags&resourceMem != 0 && r.present() }

// Prefetchable reports a prefetchable memory BAR.
func (r Resource) Prefetchable() bool { return r.Flags&resourcePrefetch != 0 }

// Mem64 reports a 64-bit memory BAR (which uses the next BAR slot too).
func (r Resource) Mem64() bool { return r.Flags&resourceMem64 != 0 }

// Size is the length of the region in bytes, 0 if absent.
func (r Resource) Size() uint64 {
	if !r.present() {
		return 0
	}
	return r.End - r.Start + 1
}

func (r Resource) present() bool {
	return r.Flags&(resourceIO|resourceMem) != 0 && r.End > r.Start
}

// parseResources parses the content of a sysfs resource file: one line per
// resource with three 0x-prefixed hex numbers. Anything else is an error.
func parseResources(s string) ([]Resource, error) {
	s, ok := strings.CutSuffix(s, "\n")
	if !ok || s == "" {
		return nil, fmt.Errorf("resource file: empty or unterminated")
	}
	lines := strings.Split(s, "\n")
	out := make([]Resource, 0, len(lines))
	for i, line := range lines {
		f := strings.Fields(line)
		if len(f) != 3 {
			return nil, fmt.Errorf("resource file line %d: %q: want 3 fields", i, line)
		}
		var v [3]uint64
		for j, w := range f {
			d, ok := strings.CutPrefix(w, "0x")
			if !ok || d == "" {
				return nil, fmt.Errorf("resource file line %d: %q: field %q is not 0x hex", i, line, w)
			}
			n, err := strconv.ParseUint(d, 16, 64)
			if err != nil {
				return nil, fmt.Errorf("resource file line %d: %q: field %q is not 0x hex", i, line, w)
			}
			v[j] = n
		}
		r := Resource{Start: v[0], End: v[1], Flags: v[2]}
		if r.End < r.Start && r.Flags&(resourceIO|resourceMem) != 0 {
			return nil, fmt.Errorf("resource file line %d: %q: end before start", i, line)
		}
		out = append(out, r)
	}
	return out, nil
}

// ReadResources reads and parses dir/resource, the resource file of the
// function whose sysfs directory is dir.
func ReadResources(dir string) ([]Resource, error) {
	path := filepath.Join(dir, "resource")
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	res, err := parseResources(string(b))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return res, nil
}
