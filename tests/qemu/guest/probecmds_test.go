package main

import (
	"encoding/json"
	"path/filepath"
	"testing"
	"time"

	"github.com/vserial/vserial/tests/qemu/internal/wire"
	"golang.org/x/sys/unix"
)

// TestProbeOnFIFO runs the probe's steps on a FIFO, whose answers are
// known: a second open succeeds, an empty non-blocking read is EAGAIN,
// written bytes come back, and lseek, fsync and TCGETS fail as pipes do.
func TestProbeOnFIFO(t *testing.T) {
	dir := t.TempDir()
	fifo, sock := filepath.Join(dir, "fifo"), filepath.Join(dir, "probe.sock")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- probeServe([]string{fifo, sock}) }()
	step := func(argv ...string) wire.ProbeResult {
		t.Helper()
		out := captureStdout(t)
		var err error
		for range 100 { // until probe-serve listens
			if err = probe(append([]string{sock}, argv...)); err == nil {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if err != nil {
			t.Fatalf("probe %v: %v", argv, err)
		}
		var r wire.ProbeResult
		if err := json.Unmarshal(out.Bytes(), &r); err != nil {
			t.Fatalf("probe %v printed %q: %v", argv, out, err)
		}
		return r
	}
	for _, c := range []struct {
		argv []string
		want string
	}{
		{[]string{"read", "4"}, "-1 not open"},
		{[]string{"open", "nonblock"}, "0"},
		{[]string{"open"}, "-1 already open"},
		{[]string{"open2"}, "0"},
		{[]string{"fstat"}, "0 type=fifo"},
		{[]string{"bogus"}, `-1 unknown step "bogus"`},
		{[]string{"read", "4"}, "-1 EAGAIN"},
		{[]string{"poll"}, "1 events=OUT|WRNORM"},
		{[]string{"write", "abc"}, "3"},
		{[]string{"poll", "IN", "IN", "1000"}, "1 events=IN|OUT|RDNORM|WRNORM"},
		{[]string{"epoll"}, "1 events=IN|OUT|RDNORM|WRNORM"},
		{[]string{"ioctl", "FIONREAD"}, "3"},
		{[]string{"read", "10"}, `3 data="abc"`},
		{[]string{"poll", "IN", "IN", "50"}, "1 events=OUT|WRNORM (wanted state never came)"},
		{[]string{"lseek"}, "-1 ESPIPE"},
		{[]string{"fsync"}, "-1 EINVAL"},
		{[]string{"ioctl", "TCGETS"}, "-1 ENOTTY"},
		{[]string{"nonblock", "off"}, "0"},
		{[]string{"open-other", filepath.Join(dir, "missing")}, "-1 ENOENT"},
		{[]string{"close"}, "0"},
		{[]string{"close"}, "-1 not open"},
	} {
		if got := step(c.argv...).Outcome(); got != c.want {
			t.Errorf("probe %v: %s, want %s", c.argv, got, c.want)
		}
	}
	step("open", "nonblock")
	// A pipe takes 64 KiB, then pushes back.
	if r := step("fill", "4096", "1000000", "10", "1"); r.Errno != "EAGAIN" || r.Bytes != 64<<10 {
		t.Errorf("fill: %+v, want EAGAIN after 65536 bytes", r)
	}
	step("quit")
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("probe-serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Error("probe-serve did not stop on quit")
	}
}
