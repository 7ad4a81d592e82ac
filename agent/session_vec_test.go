package agent

import (
	"bytes"
	"net"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// unixPair returns both ends of a connected stream socket pair.
func unixPair(t *testing.T) (*net.UnixConn, *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var conns [2]*net.UnixConn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c.(*net.UnixConn)
		t.Cleanup(func() { c.Close() })
	}
	return conns[0], conns[1]
}

// hostUp is a Port whose host side is connected; nothing else is used.
type hostUp struct{ Port }

func (hostUp) HostConnected() bool { return true }

func TestGatedReaderReadBuffersFillsInOrder(t *testing.T) {
	a, b := unixPair(t)
	raw, err := b.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	r := newGatedReader(hostUp{}, raw)
	want := []byte("0123456789abcdef")
	if _, err := a.Write(want); err != nil {
		t.Fatal(err)
	}
	bufs := [][]byte{make([]byte, 4), make([]byte, 4), make([]byte, 64)}
	n, err := r.ReadBuffers(bufs)
	if err != nil || n != len(want) {
		t.Fatalf("ReadBuffers = %d, %v; want %d", n, err, len(want))
	}
	got := append(append(append([]byte(nil), bufs[0]...), bufs[1]...), bufs[2][:n-8]...)
	if !bytes.Equal(got, want) {
		t.Fatalf("read %q, want %q", got, want)
	}
	// A plain Read after a vectored one reads into its own buffer.
	if _, err := a.Write([]byte("xy")); err != nil {
		t.Fatal(err)
	}
	one := make([]byte, 8)
	if n, err := r.Read(one); err != nil || string(one[:n]) != "xy" {
		t.Fatalf("Read = %q, %v", one[:n], err)
	}
	a.Close()
	if n, err := r.ReadBuffers(bufs); n != 0 || err == nil {
		t.Fatalf("ReadBuffers at EOF = %d, %v", n, err)
	}
}

func TestConnWriterWriteBuffersInOrder(t *testing.T) {
	a, b := unixPair(t)
	w := &connWriter{c: a}
	parts := [][]byte{[]byte("abc"), []byte("defg"), []byte("h")}
	n, err := w.WriteBuffers(parts)
	if err != nil || n != 8 {
		t.Fatalf("WriteBuffers = %d, %v", n, err)
	}
	if string(parts[0]) != "abc" || len(parts) != 3 {
		t.Fatal("WriteBuffers changed its argument")
	}
	for _, v := range w.vec {
		if v != nil {
			t.Fatal("connWriter keeps references to the caller's buffers")
		}
	}
	got := make([]byte, 8)
	if _, err := b.Read(got); err != nil || string(got) != "abcdefgh" {
		t.Fatalf("peer read %q, %v", got, err)
	}
	b.Close()
	// Once the peer is gone the error sticks, as with Write.
	var werr error
	for range 100 {
		if _, werr = w.WriteBuffers(parts); werr != nil {
			break
		}
	}
	if werr == nil {
		t.Fatal("WriteBuffers to a closed peer never failed")
	}
	if _, err := w.Write([]byte("x")); err == nil {
		t.Fatal("Write after a failed WriteBuffers succeeded")
	}
}
