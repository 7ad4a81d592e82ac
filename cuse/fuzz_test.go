package cuse

import (
	"context"
	"os"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// quickHandler answers at once: Read and Write never wait.
type quickHandler struct{ *fakeHandler }

func (quickHandler) Read(ctx context.Context, r Request, b []byte) (int, syscall.Errno) {
	return copy(b, "data"), 0
}

// FuzzRequest hands the server one message as the kernel would write it:
// any bytes, with a header whose length may lie. The server must not
// panic, must answer each well-framed request at most once with a reply
// whose length fits its header, and must leave nothing in flight once the
// answers are in.
func FuzzRequest(f *testing.F) {
	f.Add(append(hdr(opCUSEInit, 1, initInLen), u32s(7, 38, 0, 1)...))
	f.Add(append(hdr(opOpen, 2, openInLen), u32s(2, 0)...))
	f.Add(append(hdr(opWrite, 3, writeInLen+3), append(readIn(1, 0, 3, 0), "abc"...)...))
	f.Add(append(hdr(opRead, 4, readInLen), readIn(1, 0, 10, 0)...))
	f.Add(append(hdr(opPoll, 5, pollInLen), append(u64s(1, 2), u32s(1, 1)...)...))
	f.Add(append(hdr(opInterrupt, 6, interruptLen), u64s(4)...))
	f.Add(hdr(opRelease, 7, 0))
	f.Add([]byte{0x28, 0, 0, 0})
	f.Fuzz(func(t *testing.T, msg []byte) {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fds[1])
		unix.SetNonblock(fds[0], true)
		s, err := NewServer(os.NewFile(uintptr(fds[0]), "fuzz"), Config{Name: "fuzz", MaxRead: 4096, MaxWrite: 4096}, &quickHandler{newHandler()})
		if err != nil {
			t.Fatal(err)
		}
		bp := s.bufs.Get().(*[]byte)
		if len(msg) > len(*bp) {
			msg = msg[:len(*bp)]
		}
		n := copy(*bp, msg)
		if !s.handle((*bp)[:n], bp) {
			s.bufs.Put(bp)
		}
		s.wg.Wait() // every request started has been answered
		s.mu.Lock()
		left := len(s.inflight)
		s.mu.Unlock()
		if left != 0 {
			t.Fatalf("%d requests in flight after their answers", left)
		}
		s.Close()
		b := make([]byte, 1<<16)
		for replies := 0; ; replies++ {
			k, err := unix.Read(fds[1], b)
			if err != nil || k == 0 {
				break
			}
			if replies > 0 {
				t.Fatalf("more than one reply to one request")
			}
			if k < outHeaderLen || int(le.Uint32(b)) != k {
				t.Fatalf("reply of %d bytes, header says %d", k, le.Uint32(b))
			}
		}
	})
}

// hdr is a fuse_in_header for a request with n bytes of arguments.
func hdr(op uint32, unique uint64, n int) []byte {
	b := make([]byte, inHeaderLen)
	le.PutUint32(b[0:], uint32(inHeaderLen+n))
	le.PutUint32(b[4:], op)
	le.PutUint64(b[8:], unique)
	return b
}
