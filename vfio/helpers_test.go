package vfio

import (
	"errors"
	"log/slog"
	"os"
	"testing"
)

const testAddr = "0000:00:03.0"

// qemuResources is the sysfs resource file of a QEMU virtio-serial-pci
// function: BAR0 I/O, BAR1 MSI-X, BAR4 the modern registers.
const qemuResources = `0x000000000000c040 0x000000000000c07f 0x0000000000040101
0x00000000febd1000 0x00000000febd1fff 0x0000000000040200
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000fe0000000000 0x0000fe0000003fff 0x000000000014220c
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x00000000feb80000 0x00000000febbffff 0x0000000000046200
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000000000000000 0x0000000000000000 0x0000000000000000
`

var quiet = slog.New(slog.DiscardHandler)

// fakeSource stands in for the physical page sources of no-IOMMU mode:
// 2 MiB heap chunks at made-up physical addresses from 1 GiB up.
type fakeSource struct {
	next uint64
	out  map[*byte]bool
}

func newFakeSource() *fakeSource { return &fakeSource{next: 0x4000_0000, out: map[*byte]bool{}} }

func (f *fakeSource) ChunkSize() int   { return 2 << 20 }
func (f *fakeSource) Describe() string { return "fake 2 MiB pages" }

func (f *fakeSource) Get() ([]byte, uint64, error) {
	m := make([]byte, f.ChunkSize())
	f.out[&m[0]] = true
	p := f.next
	f.next += uint64(3 * f.ChunkSize())
	return m, p, nil
}

func (f *fakeSource) Put(m []byte) error {
	if !f.out[&m[0]] {
		return errors.New("fake: put of a chunk not handed out")
	}
	delete(f.out, &m[0])
	return nil
}

// openFDs counts this process's open descriptors, to catch leaks.
func openFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("cannot count descriptors: %v", err)
	}
	return len(ents)
}
