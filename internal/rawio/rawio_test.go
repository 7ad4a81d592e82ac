package rawio

import (
	"bytes"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

func socketpair(t *testing.T) (int, int) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fds[0]); unix.Close(fds[1]) })
	return fds[0], fds[1]
}

func TestVectorsSkipEmptyAndRoundTrip(t *testing.T) {
	a, b := socketpair(t)
	var v Iovecs
	n, e := v.Writev(a, [][]byte{nil, []byte("ab"), {}, []byte("cde")})
	if e != 0 || n != 5 {
		t.Fatalf("writev: %d, %v", n, e)
	}
	for i := range v {
		if v[i].Base != nil {
			t.Fatalf("iovec %d still points at a buffer after the call", i)
		}
	}
	x, y := make([]byte, 1), make([]byte, 8)
	n, e = v.Readv(b, [][]byte{{}, x, y})
	if e != 0 || n != 5 || string(x)+string(y[:4]) != "abcde" {
		t.Fatalf("readv: %d, %v, %q %q", n, e, x, y)
	}
	if n, e = v.Readv(b, [][]byte{y}); e != unix.EAGAIN || n != 0 {
		t.Fatalf("readv on an empty socket: %d, %v, want 0, EAGAIN", n, e)
	}
	if n, e = v.Readv(b, [][]byte{nil, {}}); e != 0 || n != 0 {
		t.Fatalf("readv of no bytes: %d, %v (made a call?)", n, e)
	}
}

// More than MaxIov buffers: the call moves the first MaxIov and leaves the
// rest (a short count), never EINVAL from the kernel's UIO_MAXIOV.
func TestVectorsStopAtMaxIov(t *testing.T) {
	a, b := socketpair(t)
	bufs := make([][]byte, 2000)
	for i := range bufs {
		bufs[i] = []byte{byte(i)}
	}
	var v Iovecs
	n, e := v.Writev(a, bufs)
	if e != 0 || n != MaxIov {
		t.Fatalf("writev of %d one-byte buffers: %d, %v, want %d", len(bufs), n, e, MaxIov)
	}
	got := make([]byte, 4096)
	n, e = Read(b, got)
	if e != 0 || n != MaxIov || got[MaxIov-1] != byte(MaxIov-1) {
		t.Fatalf("read: %d, %v", n, e)
	}
}

func TestErrorsAreErrnos(t *testing.T) {
	var v Iovecs
	if n, e := v.Writev(-1, [][]byte{[]byte("x")}); e != unix.EBADF || n != 0 {
		t.Errorf("writev(-1): %d, %v, want 0, EBADF", n, e)
	}
	if n, e := Read(-1, make([]byte, 1)); e != unix.EBADF || n != 0 {
		t.Errorf("read(-1): %d, %v, want 0, EBADF", n, e)
	}
	if n, e := Read(-1, nil); e != 0 || n != 0 {
		t.Errorf("read of nothing: %d, %v, want no call", n, e)
	}
}

func TestEventfd(t *testing.T) {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if e := EventfdDrain(fd); e != unix.EAGAIN {
		t.Fatalf("drain of a zero count: %v, want EAGAIN", e)
	}
	for range 3 {
		if e := EventfdAdd(fd); e != 0 {
			t.Fatal(e)
		}
	}
	var c [8]byte
	if _, err := unix.Read(fd, c[:]); err != nil || !bytes.Equal(c[:], []byte{3, 0, 0, 0, 0, 0, 0, 0}) {
		t.Fatalf("count %v, %v, want 3", c, err)
	}
	EventfdAdd(fd)
	if e := EventfdDrain(fd); e != 0 {
		t.Fatal(e)
	}
	if e := EventfdDrain(fd); e != unix.EAGAIN {
		t.Fatalf("second drain: %v, want EAGAIN", e)
	}
}

func TestAllocatesNothing(t *testing.T) {
	a, b := socketpair(t)
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(efd)
	v := new(Iovecs)
	out := [][]byte{[]byte("hello"), []byte("world")}
	in := [][]byte{make([]byte, 4), make([]byte, 16)}
	one := make([]byte, 1)
	allocs := testing.AllocsPerRun(100, func() {
		v.Writev(a, out)
		v.Readv(b, in)
		v.Writev(a, out[:1])
		Read(b, one)
		Read(b, in[1])
		EventfdAdd(efd)
		EventfdDrain(efd)
	})
	if allocs != 0 {
		t.Errorf("%v allocations per round", allocs)
	}
}

// TestEpollWait: a raw wait times out with nothing, returns a ready
// descriptor's event, and allocates nothing.
func TestEpollWait(t *testing.T) {
	a, b := socketpair(t)
	ep := epollFD(t)
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, b, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(b)}); err != nil {
		t.Fatal(err)
	}
	evs := make([]unix.EpollEvent, 4)
	if n, e := EpollWait(ep, evs, 1); n != 0 || e != 0 {
		t.Fatalf("idle wait: %d events, %v", n, e)
	}
	unix.Write(a, []byte("x"))
	if n, e := EpollWait(ep, evs, 1000); n != 1 || e != 0 || evs[0].Fd != int32(b) || evs[0].Events&unix.EPOLLIN == 0 {
		t.Fatalf("wait after a write: %d events %+v, %v", n, evs[0], e)
	}
	if _, e := EpollWait(ep, nil, 0); e != unix.EINVAL {
		t.Errorf("no room for events: %v, want EINVAL", e)
	}
	if allocs := testing.AllocsPerRun(50, func() { EpollWait(ep, evs, 0) }); allocs != 0 {
		t.Errorf("%v allocations per wait", allocs)
	}
}

// TestPreadPwrite: positioned accesses of exact widths, as the register
// and configuration-space files take them.
func TestPreadPwrite(t *testing.T) {
	fd, err := unix.Open(t.TempDir()+"/regs", unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if n, e := Pwrite(fd, []byte{1, 2, 3, 4}, 8); n != 4 || e != 0 {
		t.Fatalf("pwrite: %d, %v", n, e)
	}
	b := make([]byte, 2)
	if n, e := Pread(fd, b, 9); n != 2 || e != 0 || !bytes.Equal(b, []byte{2, 3}) {
		t.Fatalf("pread: %d %v, %v", n, b, e)
	}
	if n, e := Pread(fd, nil, 0); n != 0 || e != 0 {
		t.Errorf("empty pread: %d, %v", n, e)
	}
	if _, e := Pread(-1, b, 0); e != unix.EBADF {
		t.Errorf("pread on a bad descriptor: %v, want EBADF", e)
	}
	if allocs := testing.AllocsPerRun(50, func() { Pwrite(fd, b, 0); Pread(fd, b, 0) }); allocs != 0 {
		t.Errorf("%v allocations per access", allocs)
	}
}

// TestSchedSetAttr moves the calling thread to SCHED_BATCH and back (no
// privilege needed) and reads the policy back each time.
func TestSchedSetAttr(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	for _, policy := range []uint32{unix.SCHED_BATCH, unix.SCHED_NORMAL} {
		attr := unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: policy}
		if e := SchedSetAttr(&attr); e != 0 {
			t.Fatalf("policy %d: %v", policy, e)
		}
		got, err := unix.SchedGetAttr(0, 0)
		if err != nil || got.Policy != policy {
			t.Fatalf("policy after setting %d: %+v, %v", policy, got, err)
		}
	}
	bad := unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: 99}
	if e := SchedSetAttr(&bad); e != unix.EINVAL {
		t.Errorf("an unknown policy: %v, want EINVAL", e)
	}
}

// TestEpollMod: adding EPOLLOUT to a writable descriptor's interest
// brings an event at once (MOD re-polls it), with the data given; taking
// it out again leaves nothing to report.
func TestEpollMod(t *testing.T) {
	_, b := socketpair(t)
	ep := epollFD(t)
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, b, &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLET, Fd: 7, Pad: 9}); err != nil {
		t.Fatal(err)
	}
	evs := make([]unix.EpollEvent, 4)
	if n, _ := EpollWait(ep, evs, 0); n != 0 {
		t.Fatalf("EPOLLIN only, nothing to read: %d events", n)
	}
	if e := EpollMod(ep, b, unix.EPOLLIN|unix.EPOLLOUT|unix.EPOLLET, 7, 9); e != 0 {
		t.Fatal(e)
	}
	if n, e := EpollWait(ep, evs, 1000); n != 1 || e != 0 || evs[0].Fd != 7 || evs[0].Pad != 9 || evs[0].Events&unix.EPOLLOUT == 0 {
		t.Fatalf("after adding EPOLLOUT: %d events %+v, %v", n, evs[0], e)
	}
	if e := EpollMod(ep, b, unix.EPOLLIN|unix.EPOLLET, 7, 9); e != 0 {
		t.Fatal(e)
	}
	if n, _ := EpollWait(ep, evs, 0); n != 0 {
		t.Fatalf("after taking EPOLLOUT out: %d events", n)
	}
	if e := EpollMod(ep, -1, unix.EPOLLIN, 0, 0); e != unix.EBADF {
		t.Errorf("bad descriptor: %v, want EBADF", e)
	}
	if allocs := testing.AllocsPerRun(50, func() { EpollMod(ep, b, unix.EPOLLIN|unix.EPOLLET, 7, 9) }); allocs != 0 {
		t.Errorf("%v allocations per MOD", allocs)
	}
}

// epollFD is a new epoll descriptor, closed at the test's end.
func epollFD(t *testing.T) int {
	t.Helper()
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(ep) })
	return ep
}
