package main

import (
	"bytes"
	"io"
	"os"
	"strconv"
	"testing"

	"github.com/vserial/vserial/tests/qemu/internal/wire"
	"golang.org/x/sys/unix"
)

// openTestPTY opens a pseudo-terminal pair and returns the master and the
// slave's path, or skips where there is no /dev/ptmx.
func openTestPTY(t *testing.T) (*os.File, string) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetUint32(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	return m, "/dev/pts/" + strconv.FormatUint(uint64(n), 10)
}

// ptyxfer makes the terminal raw before it announces itself: every byte,
// control characters included, passes unchanged both ways.
func TestPTYXferIsByteExact(t *testing.T) {
	out := captureStdout(t)
	m, slave := openTestPTY(t)
	const n, seedOut, seedIn = 20000, 3, 4
	errc := make(chan error, 1)
	go func() { errc <- ptyXfer([]string{slave, strconv.Itoa(n), strconv.Itoa(seedOut)}) }()
	got := make([]byte, len(wire.PTYReady)+n)
	if _, err := io.ReadFull(m, got); err != nil {
		t.Fatal(err)
	}
	want := make([]byte, n)
	io.ReadFull(wire.Pattern(seedOut), want)
	if string(got[:len(wire.PTYReady)]) != wire.PTYReady || !bytes.Equal(got[len(wire.PTYReady):], want) {
		t.Fatalf("master read %q... , want the marker then the pattern", got[:min(len(got), 40)])
	}
	if _, err := io.CopyN(m, wire.Pattern(seedIn), n); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if m := kv(out.String()); m["sha256"] != patternSum(seedIn, n) || m["sent"] != patternSum(seedOut, n) {
		t.Errorf("ptyxfer printed %q", out)
	}
}
