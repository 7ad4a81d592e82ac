package uio

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

func readInt(t *testing.T, path string) int {
	t.Helper()
	n, err := readCount(path)
	if err != nil {
		t.Skipf("cannot read %s: %v", path, err)
	}
	return n
}

const hugeDir = "/sys/kernel/mm/hugepages/hugepages-2048kB"

// skipUnlessHugepage skips unless a 2 MiB hugepage is free and PFNs are
// visible; it never reserves pages on the machine running the unit tests.
func skipUnlessHugepage(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root and hugepages: run inside the guest tests")
	}
	if readInt(t, filepath.Join(hugeDir, "free_hugepages")) == 0 {
		t.Skip("needs root and hugepages (no free 2 MiB hugepage here): run inside the guest tests, or sysctl vm.nr_hugepages=1")
	}
}

func TestHugeSourceReal(t *testing.T) {
	skipUnlessHugepage(t)
	h := &hugeSource{pagemap: "/proc/self/pagemap", nrFile: filepath.Join(hugeDir, "nr_hugepages")}
	mem, phys, err := h.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Put(mem)
	if len(mem) != hugeSize || phys == 0 || phys%hugeSize != 0 {
		t.Fatalf("hugepage: %d bytes at physical %#x", len(mem), phys)
	}
	for i := 0; i < len(mem); i += 4096 {
		if mem[i] != 0 {
			t.Fatalf("byte %d of a fresh hugepage is %#x", i, mem[i])
		}
	}
}

func TestHugeSourceNoneFree(t *testing.T) {
	// With no free hugepage and no overcommit, mmap must fail with ENOMEM,
	// and the error must tell the operator what to set.
	free := readInt(t, filepath.Join(hugeDir, "free_hugepages"))
	over := readInt(t, filepath.Join(hugeDir, "nr_overcommit_hugepages"))
	if free != 0 || over != 0 {
		t.Skipf("this machine has hugepages (free %d, overcommit %d); the failure path cannot be provoked", free, over)
	}
	// The pool file is a fake: "reserving" writes to it, the kernel pool
	// stays empty, so the retried mmap fails too.
	nr := filepath.Join(t.TempDir(), "nr_hugepages")
	if err := os.WriteFile(nr, []byte("0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	h := &hugeSource{pagemap: "/proc/self/pagemap", nrFile: nr, reserve: true}
	_, _, err := h.Get()
	if !errors.Is(err, ErrNoHugepages) {
		t.Fatalf("get = %v, want ErrNoHugepages", err)
	}
	for _, want := range []string{"vm.nr_hugepages", "hugepages=N", nr} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if b, _ := os.ReadFile(nr); string(b) != "1\n" {
		t.Errorf("pool file = %q, want the reservation attempt \"1\\n\"", b)
	}
	// Without permission to reserve, the file is left alone.
	os.WriteFile(nr, []byte("0\n"), 0o644)
	h.reserve = false
	if _, _, err := h.Get(); !errors.Is(err, ErrNoHugepages) {
		t.Fatalf("get = %v, want ErrNoHugepages", err)
	}
	if b, _ := os.ReadFile(nr); string(b) != "0\n" {
		t.Errorf("pool file = %q after get with reserve off", b)
	}
}

func TestReserveHugepages(t *testing.T) {
	nr := filepath.Join(t.TempDir(), "nr_hugepages")
	os.WriteFile(nr, []byte("3\n"), 0o644)
	if err := reserveHugepages(nr, 2); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(nr); string(b) != "5\n" {
		t.Errorf("pool file = %q, want 5", b)
	}
	for _, bad := range []string{"", "x\n", "-1\n", "3 4\n"} {
		os.WriteFile(nr, []byte(bad), 0o644)
		if err := reserveHugepages(nr, 1); err == nil {
			t.Errorf("reserve with pool file %q succeeded", bad)
		}
	}
	if err := reserveHugepages(filepath.Join(t.TempDir(), "absent"), 1); err == nil {
		t.Error("reserve with a missing pool file succeeded")
	}
}

func TestSmallSourceReal(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (CAP_SYS_ADMIN) to read physical addresses from /proc/self/pagemap")
	}
	s := &smallSource{pagemap: "/proc/self/pagemap"}
	mem, phys, err := s.Get()
	if errors.Is(err, ErrNoPhysAddr) {
		t.Skipf("pagemap hides PFNs here: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	if len(mem) != os.Getpagesize() || phys == 0 || phys%uint64(os.Getpagesize()) != 0 {
		t.Errorf("page: %d bytes at physical %#x", len(mem), phys)
	}
	mem[0], mem[len(mem)-1] = 1, 2
	if err := s.Put(mem); err != nil {
		t.Fatal(err)
	}
}

func TestAllocatorSmallPagesReal(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (CAP_SYS_ADMIN) to read physical addresses from /proc/self/pagemap")
	}
	// A hugepage source that cannot have pages, with the small-page fallback:
	// what a guest without hugepages and AllowSmallPages gets.
	a := NewAllocator(&fakeSource{size: huge, limit: 0, out: map[*byte]bool{}}, &smallSource{pagemap: "/proc/self/pagemap"}, quiet)
	defer a.Close()
	r1, err := a.Alloc(16*256, 4096)
	if errors.Is(err, ErrNoPhysAddr) {
		t.Skipf("pagemap hides PFNs here: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	r2, err := a.Alloc(6+2*256, 2)
	if err != nil {
		t.Fatal(err)
	}
	if a.Chunks() != 2 || r1.Addr()/4096 == r2.Addr()/4096 {
		t.Errorf("two page-sized parts share a page: %#x %#x (%d chunks)", r1.Addr(), r2.Addr(), a.Chunks())
	}
	if _, err := a.Alloc(8192, 8); !errors.Is(err, ErrTooBig) {
		t.Errorf("8 KiB on small pages = %v, want ErrTooBig", err)
	}
}

// noFreeHugepage is a mapFn for a machine whose pool never has a free
// page: the pool file is a fake, so raising it finds nothing either.
func noFreeHugepage() ([]byte, error) { return nil, unix.ENOMEM }

func writeCount(t *testing.T, path string, n int) {
	t.Helper()
	if err := os.WriteFile(path, []byte(strconv.Itoa(n)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// Every page the allocator added to the pool is given back when it is
// closed: the pool ends where it started.
func TestHugepagesGivenBackOnClose(t *testing.T) {
	nr := filepath.Join(t.TempDir(), "nr_hugepages")
	writeCount(t, nr, 3)
	h := &hugeSource{pagemap: "/proc/self/pagemap", nrFile: nr, reserve: true, mapFn: noFreeHugepage}
	a := NewAllocator(h, nil, quiet)
	for range 4 {
		if _, err := a.Alloc(4096, 8); !errors.Is(err, ErrNoHugepages) {
			t.Fatalf("Alloc = %v, want ErrNoHugepages", err)
		}
	}
	if n, _ := readCount(nr); n != 7 {
		t.Fatalf("pool %d after four reservations from 3", n)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if n, _ := readCount(nr); n != 3 {
		t.Errorf("pool %d after Close, want 3 as at the start", n)
	}
	// Only what it added: someone else's change to the pool stays.
	h2 := &hugeSource{pagemap: "/proc/self/pagemap", nrFile: nr, reserve: true, mapFn: noFreeHugepage}
	a2 := NewAllocator(h2, nil, quiet)
	a2.Alloc(4096, 8)
	writeCount(t, nr, 10) // the operator raised it meanwhile (4 + 6)
	a2.Close()
	if n, _ := readCount(nr); n != 9 {
		t.Errorf("pool %d after Close, want 9 (the operator's 10 less the one page added)", n)
	}
	// A pool file that cannot be read back makes Close fail, with a log line.
	h3 := &hugeSource{pagemap: "/proc/self/pagemap", nrFile: nr, reserve: true, mapFn: noFreeHugepage}
	a3 := NewAllocator(h3, nil, quiet)
	a3.Alloc(4096, 8)
	os.WriteFile(nr, []byte("garbage\n"), 0o644)
	if err := a3.Close(); err == nil {
		t.Error("Close succeeded with an unreadable pool file")
	}
}

// Devices opening and closing at once (each its own allocator, one pool
// file) leave the pool where it started.
func TestHugepagesGivenBackConcurrently(t *testing.T) {
	nr := filepath.Join(t.TempDir(), "nr_hugepages")
	writeCount(t, nr, 2)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 20 {
				a := NewAllocator(&hugeSource{nrFile: nr, reserve: true, mapFn: noFreeHugepage}, nil, quiet)
				a.Alloc(4096, 8)
				a.Alloc(4096, 8)
				if err := a.Close(); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if n, _ := readCount(nr); n != 2 {
		t.Errorf("pool %d after every allocator closed, want 2", n)
	}
}

// An Open that fails to map its first chunk (here: the pool was raised
// but no page appeared, as without CAP_SYS_ADMIN for pagemap) gives the
// page it reserved back: a service restarted on failure must not grow the
// pool on every attempt.
func TestHugepagesGivenBackWhenOpenFails(t *testing.T) {
	ff := newFakeFn(t)
	nr := filepath.Join(t.TempDir(), "nr_hugepages")
	writeCount(t, nr, 1)
	ff.opts.source = &hugeSource{nrFile: nr, reserve: true, mapFn: noFreeHugepage}
	for range 3 {
		if _, err := Open(ff.sysfs, ff.dev, testAddr, ff.opts); !errors.Is(err, ErrNoHugepages) {
			t.Fatalf("Open = %v, want ErrNoHugepages", err)
		}
		if n, _ := readCount(nr); n != 1 {
			t.Fatalf("pool %d after a failed Open, want 1 as before", n)
		}
	}
}
