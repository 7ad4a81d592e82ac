package cuse

import (
	"bytes"
	"context"
	"encoding/binary"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fakeKernel is the kernel's end of a fake /dev/cuse: a SOCK_SEQPACKET
// socket pair keeps each request and each reply one message, as the
// channel does.
type fakeKernel struct {
	t   *testing.T
	fd  int
	srv *Server
	out chan error // Serve's result
}

func newFake(t *testing.T, cfg Config, h Handler) *fakeKernel {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Non-blocking, as /dev/cuse is once os.OpenFile put it in the
	// poller: Close then wakes Serve's read.
	if err := unix.SetNonblock(fds[0], true); err != nil {
		t.Fatal(err)
	}
	if cfg.Name == "" {
		cfg.Name = "vport9p1"
	}
	srv, err := NewServer(os.NewFile(uintptr(fds[0]), "fake-cuse"), cfg, h)
	if err != nil {
		t.Fatal(err)
	}
	k := &fakeKernel{t: t, fd: fds[1], srv: srv, out: make(chan error, 1)}
	go func() { k.out <- srv.Serve() }()
	t.Cleanup(func() {
		srv.Close()
		select {
		case err := <-k.out:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Serve did not return after Close")
		}
		unix.Close(k.fd)
	})
	return k
}

// send writes one request: the header for op and unique, then args.
func (k *fakeKernel) send(op uint32, unique uint64, args ...[]byte) {
	k.t.Helper()
	body := bytes.Join(args, nil)
	b := make([]byte, inHeaderLen, inHeaderLen+len(body))
	le.PutUint32(b[0:], uint32(inHeaderLen+len(body)))
	le.PutUint32(b[4:], op)
	le.PutUint64(b[8:], unique)
	le.PutUint32(b[32:], 4242) // pid
	b = append(b, body...)
	if _, err := unix.Write(k.fd, b); err != nil {
		k.t.Fatal(err)
	}
}

// reply reads one message from the server, within 5 s.
func (k *fakeKernel) reply() (unique uint64, errno int32, data []byte) {
	k.t.Helper()
	fds := []unix.PollFd{{Fd: int32(k.fd), Events: unix.POLLIN}}
	if n, err := unix.Poll(fds, 5000); err != nil || n == 0 {
		k.t.Fatalf("no reply from the server (%v)", err)
	}
	b := make([]byte, 1<<20)
	n, err := unix.Read(k.fd, b)
	if err != nil {
		k.t.Fatal(err)
	}
	if n < outHeaderLen {
		k.t.Fatalf("reply of %d bytes, shorter than its header", n)
	}
	if l := le.Uint32(b[0:]); int(l) != n {
		k.t.Fatalf("reply header says %d bytes, message has %d", l, n)
	}
	return le.Uint64(b[8:]), int32(le.Uint32(b[4:])), b[outHeaderLen:n]
}

// noReply checks that nothing arrives within d.
func (k *fakeKernel) noReply(d time.Duration) {
	k.t.Helper()
	fds := []unix.PollFd{{Fd: int32(k.fd), Events: unix.POLLIN}}
	if n, _ := unix.Poll(fds, int(d.Milliseconds())); n > 0 {
		u, e, _ := k.reply()
		k.t.Fatalf("unexpected reply: unique %d errno %d", u, e)
	}
}

func (k *fakeKernel) init() {
	k.t.Helper()
	k.send(opCUSEInit, 1, u32s(7, 38, 0, 1))
	if u, e, _ := k.reply(); u != 1 || e != 0 {
		k.t.Fatalf("CUSE_INIT: unique %d errno %d", u, e)
	}
}

func u32s(v ...uint32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		le.PutUint32(b[4*i:], x)
	}
	return b
}

func u64s(v ...uint64) []byte {
	b := make([]byte, 8*len(v))
	for i, x := range v {
		le.PutUint64(b[8*i:], x)
	}
	return b
}

// readIn is fuse_read_in (and the head of fuse_write_in).
func readIn(fh, off uint64, size, flags uint32) []byte {
	b := make([]byte, readInLen)
	le.PutUint64(b[0:], fh)
	le.PutUint64(b[8:], off)
	le.PutUint32(b[16:], size)
	le.PutUint32(b[32:], flags)
	return b
}

// fakeHandler records what it was asked; Read waits for data on rd or
// for its context.
type fakeHandler struct {
	mu       sync.Mutex
	opened   []Request
	released []Request
	written  []byte
	kh       uint64
	rd       chan []byte
	readErrs chan error // what each cancelled Read saw
}

func newHandler() *fakeHandler {
	return &fakeHandler{rd: make(chan []byte, 4), readErrs: make(chan error, 8)}
}

func (h *fakeHandler) Open(ctx context.Context, r Request) (uint64, syscall.Errno) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if r.Flags&unix.O_EXCL != 0 {
		return 0, syscall.EBUSY
	}
	h.opened = append(h.opened, r)
	return 77, 0
}

func (h *fakeHandler) Release(r Request) {
	h.mu.Lock()
	h.released = append(h.released, r)
	h.mu.Unlock()
}

func (h *fakeHandler) Read(ctx context.Context, r Request, b []byte) (int, syscall.Errno) {
	select {
	case d := <-h.rd:
		return copy(b, d), 0
	case <-ctx.Done():
		h.readErrs <- ctx.Err()
		return 0, syscall.EINTR
	}
}

func (h *fakeHandler) Write(ctx context.Context, r Request, b []byte) (int, syscall.Errno) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.written = append(h.written, b...)
	return min(len(b), 5), 0 // a short write, to see the count go back
}

func (h *fakeHandler) Poll(r Request, kh uint64, schedule bool, events uint32) uint32 {
	if schedule {
		h.mu.Lock()
		h.kh = kh
		h.mu.Unlock()
	}
	return unix.POLLOUT
}

func (h *fakeHandler) Ioctl(r Request, cmd uint32) syscall.Errno { return syscall.ENOTTY }
func (h *fakeHandler) Fsync(r Request) syscall.Errno             { return syscall.EINVAL }
func (h *fakeHandler) Flush(r Request) syscall.Errno             { return 0 }

func TestInitAnswer(t *testing.T) {
	k := newFake(t, Config{Name: "vport100p3", Major: 0, Minor: 5, MaxRead: 65536, MaxWrite: 32768}, newHandler())
	k.send(opCUSEInit, 9, u32s(7, 38, 0, 1))
	u, e, d := k.reply()
	if u != 9 || e != 0 {
		t.Fatalf("unique %d errno %d", u, e)
	}
	want := u32s(7, ourMinor, 0, unrestrictedIO, 65536, 32768, 0, 5)
	want = append(want, make([]byte, 40)...)
	want = append(want, "DEVNAME=vport100p3\x00"...)
	if !bytes.Equal(d, want) {
		t.Fatalf("cuse_init_out + info:\n got % x\nwant % x", d, want)
	}
	select {
	case <-k.srv.Ready():
	case <-time.After(time.Second):
		t.Fatal("Ready not closed after CUSE_INIT")
	}
}

func TestInitRefusesOldKernel(t *testing.T) {
	k := newFake(t, Config{}, newHandler())
	k.send(opCUSEInit, 3, u32s(7, 10, 0, 0))
	if u, e, _ := k.reply(); u != 3 || e != -int32(syscall.EPROTO) {
		t.Fatalf("unique %d errno %d, want EPROTO", u, e)
	}
	select {
	case <-k.srv.Ready():
		t.Fatal("Ready after a refused CUSE_INIT")
	default:
	}
}

func TestOpenWriteReadRelease(t *testing.T) {
	h := newHandler()
	k := newFake(t, Config{}, h)
	k.init()

	k.send(opOpen, 2, u32s(unix.O_RDWR, 0))
	u, e, d := k.reply()
	if u != 2 || e != 0 || len(d) != openOutLen || le.Uint64(d) != 77 {
		t.Fatalf("OPEN: unique %d errno %d out % x", u, e, d)
	}
	h.mu.Lock()
	if len(h.opened) != 1 || h.opened[0].PID != 4242 || h.opened[0].Flags != unix.O_RDWR {
		t.Fatalf("Open saw %+v", h.opened)
	}
	h.mu.Unlock()
	k.send(opOpen, 3, u32s(unix.O_RDWR|unix.O_EXCL, 0))
	if u, e, _ := k.reply(); u != 3 || e != -int32(syscall.EBUSY) {
		t.Fatalf("refused OPEN: unique %d errno %d", u, e)
	}

	msg := []byte("hello, port")
	k.send(opWrite, 4, readIn(77, 0, uint32(len(msg)), 0), msg)
	u, e, d = k.reply()
	if u != 4 || e != 0 || len(d) != writeOutLen || le.Uint32(d) != 5 {
		t.Fatalf("WRITE: unique %d errno %d out % x", u, e, d)
	}
	h.mu.Lock()
	if string(h.written) != string(msg) {
		t.Fatalf("Write got %q", h.written)
	}
	h.mu.Unlock()

	h.rd <- []byte("from the host")
	k.send(opRead, 5, readIn(77, 0, 4, 0))
	u, e, d = k.reply()
	if u != 5 || e != 0 || string(d) != "from" {
		t.Fatalf("READ: unique %d errno %d data %q", u, e, d)
	}

	k.send(opRelease, 6, u64s(77), u32s(unix.O_RDWR, 0), u64s(0))
	if u, e, d := k.reply(); u != 6 || e != 0 || len(d) != 0 {
		t.Fatalf("RELEASE: unique %d errno %d out % x", u, e, d)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.released) != 1 || h.released[0].FH != 77 {
		t.Fatalf("Release saw %+v", h.released)
	}
}

// A read that waits does not stall the channel; an INTERRUPT ends it with
// EINTR; a request nobody knows gets ENOSYS; ioctl and fsync get the
// handler's errors; a poll's handle comes back in FUSE_NOTIFY_POLL.
func TestBlockedReadInterrupt(t *testing.T) {
	h := newHandler()
	k := newFake(t, Config{}, h)
	k.init()
	k.send(opRead, 10, readIn(77, 0, 100, 0))
	k.noReply(50 * time.Millisecond)

	k.send(opPoll, 11, u64s(77, 0xfeed), u32s(pollScheduled, unix.POLLIN))
	u, e, d := k.reply()
	if u != 11 || e != 0 || le.Uint32(d) != unix.POLLOUT {
		t.Fatalf("POLL while a read waits: unique %d errno %d out % x", u, e, d)
	}
	k.send(opIoctl, 12, u64s(77), u32s(0, unix.TCGETS), u64s(0), u32s(0, 0))
	if u, e, _ := k.reply(); u != 12 || e != -int32(syscall.ENOTTY) {
		t.Fatalf("IOCTL: unique %d errno %d", u, e)
	}
	k.send(opFsync, 13, u64s(77), u32s(0, 0))
	if u, e, _ := k.reply(); u != 13 || e != -int32(syscall.EINVAL) {
		t.Fatalf("FSYNC: unique %d errno %d", u, e)
	}
	k.send(23, 14) // FUSE_STATFS
	if u, e, _ := k.reply(); u != 14 || e != -int32(syscall.ENOSYS) {
		t.Fatalf("unknown opcode: unique %d errno %d", u, e)
	}
	if err := k.srv.NotifyPoll(0xfeed); err != nil {
		t.Fatal(err)
	}
	u, e, d = k.reply()
	if u != 0 || e != notifyPoll || le.Uint64(d) != 0xfeed {
		t.Fatalf("FUSE_NOTIFY_POLL: unique %d code %d data % x", u, e, d)
	}

	k.send(opInterrupt, 15, u64s(10))
	if u, e, _ := k.reply(); u != 10 || e != -int32(syscall.EINTR) {
		t.Fatalf("interrupted READ: unique %d errno %d, want EINTR", u, e)
	}
	if err := <-h.readErrs; err == nil {
		t.Fatal("the read's context did not end")
	}
	// An INTERRUPT of a request already answered is dropped.
	k.send(opInterrupt, 16, u64s(10))
	k.noReply(50 * time.Millisecond)
	if k.srv.Interrupts.Load() != 1 {
		t.Fatalf("Interrupts = %d, want 1", k.srv.Interrupts.Load())
	}
	k.srv.mu.Lock()
	left := len(k.srv.inflight)
	k.srv.mu.Unlock()
	if left != 0 {
		t.Fatalf("%d requests still in flight", left)
	}
}

func TestInflightBound(t *testing.T) {
	h := newHandler()
	k := newFake(t, Config{MaxInflight: 2}, h)
	k.init()
	k.send(opRead, 20, readIn(77, 0, 10, 0))
	k.send(opRead, 21, readIn(77, 0, 10, 0))
	k.send(opRead, 22, readIn(77, 0, 10, 0))
	if u, e, _ := k.reply(); u != 22 || e != -int32(syscall.EAGAIN) {
		t.Fatalf("third READ past MaxInflight: unique %d errno %d, want EAGAIN", u, e)
	}
	if k.srv.Refused.Load() != 1 {
		t.Fatalf("Refused = %d", k.srv.Refused.Load())
	}
	// Close ends the two waiting reads.
	k.srv.Close()
	for range 2 {
		select {
		case <-h.readErrs:
		case <-time.After(5 * time.Second):
			t.Fatal("a waiting read did not end at Close")
		}
	}
}

// Malformed requests are answered EINVAL (or dropped when even the header
// is short) and counted; the server goes on.
func TestMalformed(t *testing.T) {
	k := newFake(t, Config{MaxWrite: 4096}, newHandler())
	k.init()
	if _, err := unix.Write(k.fd, []byte{1, 2, 3}); err != nil {
		t.Fatal(err)
	}
	k.noReply(50 * time.Millisecond)
	k.send(opOpen, 30) // no fuse_open_in
	if u, e, _ := k.reply(); u != 30 || e != -int32(syscall.EINVAL) {
		t.Fatalf("short OPEN: unique %d errno %d", u, e)
	}
	k.send(opWrite, 31, readIn(77, 0, 100, 0), []byte("short")) // says 100, has 5
	if u, e, _ := k.reply(); u != 31 || e != -int32(syscall.EINVAL) {
		t.Fatalf("WRITE longer than its data: unique %d errno %d", u, e)
	}
	k.send(opRead, 32, readIn(77, 0, 1<<30, 0))
	if u, e, _ := k.reply(); u != 32 || e != -int32(syscall.EINVAL) {
		t.Fatalf("READ past MaxRead: unique %d errno %d", u, e)
	}
	// A header whose length is larger than the message.
	b := make([]byte, inHeaderLen)
	binary.LittleEndian.PutUint32(b, 4096)
	binary.LittleEndian.PutUint32(b[4:], opOpen)
	binary.LittleEndian.PutUint64(b[8:], 33)
	unix.Write(k.fd, b)
	if u, e, _ := k.reply(); u != 33 || e != -int32(syscall.EINVAL) {
		t.Fatalf("header longer than the message: unique %d errno %d", u, e)
	}
	if got := k.srv.Bad.Load(); got != 5 {
		t.Fatalf("Bad = %d, want 5", got)
	}
}
