package uio

import (
	"errors"
	"testing"

	"golang.org/x/sys/unix"
)

// A mapping whose backing goes away (here: a memfd truncated to 0, which
// makes every access SIGBUS, as a hot-unplugged function's revoked BAR
// does) costs an ErrGone, for that access and every later one — not the
// process.
func TestBARAccessAfterTheMappingWentAway(t *testing.T) {
	fd, err := unix.MemfdCreate("bar", unix.MFD_CLOEXEC)
	if err != nil {
		t.Skipf("memfd: %v", err)
	}
	defer unix.Close(fd)
	if err := unix.Ftruncate(fd, 4096); err != nil {
		t.Fatal(err)
	}
	m, err := unix.Mmap(fd, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	b := &BAR{index: 4, size: 4096, mem: m, iofd: -1}
	defer b.Close()
	if err := b.Write32(8, 0xdeadbeef); err != nil {
		t.Fatal(err)
	}
	if v, err := b.Read32(8); err != nil || v != 0xdeadbeef {
		t.Fatalf("Read32 = %#x, %v", v, err)
	}
	if err := unix.Ftruncate(fd, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Read16(8); !errors.Is(err, ErrGone) {
		t.Fatalf("Read16 of a vanished mapping: %v, want ErrGone", err)
	}
	if err := b.Write8(0, 1); !errors.Is(err, ErrGone) {
		t.Fatalf("Write8 after the fault: %v, want ErrGone", err)
	}
	// A second BAR on the same goroutine still works: the fault setting
	// was restored and only the faulted BAR is marked gone.
	fd2, _ := unix.MemfdCreate("bar2", unix.MFD_CLOEXEC)
	defer unix.Close(fd2)
	unix.Ftruncate(fd2, 4096)
	m2, err := unix.Mmap(fd2, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	b2 := &BAR{index: 0, size: 4096, mem: m2, iofd: -1}
	defer b2.Close()
	if err := b2.Write16(2, 7); err != nil {
		t.Fatal(err)
	}
	if v, err := b2.Read16(2); err != nil || v != 7 {
		t.Fatalf("other BAR: %d, %v", v, err)
	}
}
