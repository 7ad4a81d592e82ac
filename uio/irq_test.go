package uio

import (
	"context"
	"encoding/binary"
	"errors"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// pipeIRQ stands in for /dev/uioN with a pipe whose read end is opened the
// way Open opens the device: non-blocking, then os.NewFile. The test writes
// 4-byte counts into the other end as the kernel's uio_read would return them.
func pipeIRQ(t *testing.T) (*IRQ, func(uint32)) {
	t.Helper()
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	r := os.NewFile(uintptr(fds[0]), "/dev/uio0")
	w := os.NewFile(uintptr(fds[1]), "uio0-writer")
	c, _, _ := fakeConfig(t)
	q := newIRQ(r, c)
	t.Cleanup(func() { q.close(); w.Close() })
	return q, func(n uint32) {
		var b [4]byte
		binary.NativeEndian.PutUint32(b[:], n)
		if _, err := w.Write(b[:]); err != nil {
			t.Error(err)
		}
	}
}

func TestIRQWaitReadsCount(t *testing.T) {
	q, fire := pipeIRQ(t)
	if q.MSIXVectors() != 0 {
		t.Errorf("MSIXVectors = %d", q.MSIXVectors())
	}
	done := make(chan error)
	go func() { done <- q.Wait(context.Background()) }()
	fire(7)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if q.Count() != 7 {
		t.Errorf("Count = %d, want 7", q.Count())
	}
	fire(9)
	if err := q.Wait(context.Background()); err != nil || q.Count() != 9 {
		t.Errorf("second Wait = %v, count %d", err, q.Count())
	}
}

func TestIRQWaitCancel(t *testing.T) {
	q, fire := pipeIRQ(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- q.Wait(ctx) }()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait after cancel = %v, want context.Canceled", err)
	}
	// The deadline used to cancel must not leak into the next Wait.
	go func() { done <- q.Wait(context.Background()) }()
	fire(1)
	if err := <-done; err != nil || q.Count() != 1 {
		t.Fatalf("Wait after a cancelled Wait = %v, count %d", err, q.Count())
	}
	// An already cancelled context returns at once, without reading.
	fire(2)
	if err := q.Wait(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait(cancelled) = %v", err)
	}
	if err := q.Wait(context.Background()); err != nil || q.Count() != 2 {
		t.Fatalf("pending interrupt lost: %v, count %d", err, q.Count())
	}
}

func TestIRQWaitClose(t *testing.T) {
	q, _ := pipeIRQ(t)
	done := make(chan error)
	go func() { done <- q.Wait(context.Background()) }()
	// Close while Wait is parked in the poller (or about to be: either way
	// it must end with ErrClosed).
	if err := q.close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, os.ErrClosed) {
		t.Fatalf("Wait after close = %v, want os.ErrClosed", err)
	}
	if err := q.Wait(context.Background()); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("Wait on closed IRQ = %v, want os.ErrClosed", err)
	}
}

func TestIRQShortRead(t *testing.T) {
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	r, w := os.NewFile(uintptr(fds[0]), "r"), os.NewFile(uintptr(fds[1]), "w")
	defer w.Close()
	c, _, _ := fakeConfig(t)
	q := newIRQ(r, c)
	defer q.close()
	w.Write([]byte{1, 2})
	if err := q.Wait(context.Background()); err == nil {
		t.Fatal("a 2-byte read was accepted as an interrupt count")
	}
	w.Close()
	if err := q.Wait(context.Background()); err == nil {
		t.Fatal("EOF was accepted as an interrupt")
	}
}

func TestIRQUnmask(t *testing.T) {
	q, _ := pipeIRQ(t)
	rec := q.cfg.f.(*recorder)
	if err := q.Unmask(); err != nil {
		t.Fatal(err)
	}
	if n := len(rec.log); n == 0 || rec.log[n-1] != "w 0x4 03 00" {
		t.Errorf("config accesses %q, want a final 16-bit write of the command register (03 00 at 0x4)", rec.log)
	}
}
