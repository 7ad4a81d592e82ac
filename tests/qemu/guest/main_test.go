package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vserial/vserial/tests/qemu/internal/wire"
)

func captureStdout(t *testing.T) *bytes.Buffer {
	t.Helper()
	var buf bytes.Buffer
	old := stdout
	stdout = &buf
	t.Cleanup(func() { stdout = old })
	return &buf
}

// peer listens on a Unix socket standing in for a port and hands the test
// the accepted connection.
func peer(t *testing.T) (string, <-chan net.Conn) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "port")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	ch := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err == nil {
			t.Cleanup(func() { c.Close() })
			ch <- c
		}
	}()
	return sock, ch
}

func patternSum(seed uint64, n int64) string {
	h := sha256.New()
	io.CopyN(h, wire.Pattern(seed), n)
	return hex.EncodeToString(h.Sum(nil))
}

func kv(out string) map[string]string {
	m := map[string]string{}
	for _, f := range strings.Fields(out) {
		if k, v, ok := strings.Cut(f, "="); ok {
			m[k] = v
		}
	}
	return m
}

// TestSinkChecksWhatArrives reads through Go's poller and, with raw, on a
// blocking descriptor (the benchmark's C-like client).
func TestSinkChecksWhatArrives(t *testing.T) {
	for _, opts := range [][]string{nil, {"raw"}} {
		out := captureStdout(t)
		sock, conns := peer(t)
		const n = 300000
		go func() {
			c := <-conns
			io.CopyN(c, wire.Pattern(5), n)
		}()
		if err := sink(append([]string{sock, strconv.Itoa(n)}, opts...)); err != nil {
			t.Fatal(opts, err)
		}
		if got := kv(out.String()); got["bytes"] != strconv.Itoa(n) || got["sha256"] != patternSum(5, n) {
			t.Errorf("sink %v printed %q", opts, out)
		}
	}
}

func TestSinkReadyByteComesFirst(t *testing.T) {
	out := captureStdout(t)
	sock, conns := peer(t)
	const n = 5000
	errc := make(chan error, 1)
	go func() {
		c := <-conns
		var b [1]byte
		if _, err := io.ReadFull(c, b[:]); err != nil || b[0] != wire.SinkReady {
			errc <- fmt.Errorf("first byte from the sink %#x, %v; want the ready byte", b[0], err)
			return
		}
		_, err := io.CopyN(c, wire.Pattern(6), n)
		errc <- err
	}()
	if err := sink([]string{sock, strconv.Itoa(n), "count", "ready"}); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if got := kv(out.String()); got["bytes"] != strconv.Itoa(n) {
		t.Errorf("sink printed %q", out)
	}
	if err := sink([]string{sock, "1", "bogus"}); err == nil {
		t.Error("sink accepted an unknown option")
	}
}

func TestSinkFailsOnShortInput(t *testing.T) {
	captureStdout(t)
	sock, conns := peer(t)
	go func() {
		c := <-conns
		c.Write([]byte("abc"))
		c.Close()
	}()
	if err := sink([]string{sock, "10"}); err == nil || !strings.Contains(err.Error(), "after 3 of 10") {
		t.Errorf("sink on a short stream: %v", err)
	}
}

// TestSourceWritesThePattern writes through Go's poller and, with raw, on
// a blocking descriptor; "block raw" repeats the pattern's first block.
func TestSourceWritesThePattern(t *testing.T) {
	for _, opts := range [][]string{nil, {"raw"}, {"block", "raw"}, {"raw", "block"}} {
		out := captureStdout(t)
		sock, conns := peer(t)
		const n = 200001
		got := make(chan string, 1)
		go func() {
			h := sha256.New()
			io.Copy(h, <-conns) // until source closes
			got <- hex.EncodeToString(h.Sum(nil))
		}()
		if err := source(append([]string{sock, strconv.Itoa(n), "9"}, opts...)); err != nil {
			t.Fatal(opts, err)
		}
		want := patternSum(9, n)
		if slices.Contains(opts, "block") {
			block := make([]byte, wire.BlockSize)
			io.ReadFull(wire.Pattern(9), block)
			h := sha256.New()
			for left := n; left > 0; left -= min(left, len(block)) {
				h.Write(block[:min(left, len(block))])
			}
			want = hex.EncodeToString(h.Sum(nil))
		}
		if sum := <-got; sum != want {
			t.Errorf("source %v: peer got sha256 %s, want %s (source printed %q)", opts, sum, want, out)
		}
		if sum := kv(out.String())["sha256"]; !slices.Contains(opts, "block") && sum != want {
			t.Errorf("source %v printed sha256 %s, want %s", opts, sum, want)
		}
	}
	if err := source([]string{"x", "1", "2", "fast"}); err == nil {
		t.Error("source accepted an unknown option")
	}
}

func TestPingpongAndEcho(t *testing.T) {
	out := captureStdout(t)
	sock, conns := peer(t)
	go func() {
		c := <-conns
		io.Copy(c, c) // the host side echoes
	}()
	if err := pingpong([]string{sock, "50"}); err != nil {
		t.Fatal(err)
	}
	if m := kv(out.String()); m["count"] != "50" || m["p99_us"] == "" {
		t.Errorf("pingpong printed %q", out)
	}

	out.Reset()
	sock, conns = peer(t)
	done := make(chan []byte, 1)
	go func() {
		c := <-conns
		c.Write([]byte("hello"))
		c.(*net.UnixConn).CloseWrite()
		b, _ := io.ReadAll(c)
		done <- b
	}()
	if err := echo([]string{sock}); err != nil {
		t.Fatal(err)
	}
	if b := <-done; string(b) != "hello" || !strings.Contains(out.String(), "bytes=5") {
		t.Errorf("echo sent back %q, printed %q", b, out)
	}
}

func TestModulesDep(t *testing.T) {
	p := filepath.Join(t.TempDir(), "modules.dep")
	os.WriteFile(p, []byte("kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio.ko\n"+
		"kernel/drivers/virtio/virtio.ko:\nkernel/x/snd-hda.ko.xz:\n"), 0o644)
	deps, err := readModulesDep(p)
	if err != nil {
		t.Fatal(err)
	}
	if d := deps["kernel/drivers/virtio/virtio_pci.ko"]; len(d) != 1 || d[0] != "kernel/drivers/virtio/virtio.ko" {
		t.Errorf("deps of virtio_pci: %v", d)
	}
	if got := findModule(deps, "virtio-pci"); got != "kernel/drivers/virtio/virtio_pci.ko" {
		t.Errorf("findModule(virtio-pci) = %q", got)
	}
	if got := findModule(deps, "snd_hda"); got != "kernel/x/snd-hda.ko.xz" {
		t.Errorf("findModule(snd_hda) = %q", got)
	}
	if got := findModule(deps, "virtio_console"); got != "" {
		t.Errorf("findModule of a missing module = %q", got)
	}
}

func TestCputimeOfSelf(t *testing.T) {
	out := captureStdout(t)
	if err := cputime([]string{strconv.Itoa(os.Getpid())}); err != nil {
		t.Fatal(err)
	}
	if m := kv(out.String()); m["utime_s"] == "" || m["stime_s"] == "" {
		t.Errorf("cputime printed %q", out)
	}
	if err := cputime([]string{"0"}); err == nil {
		t.Error("cputime of pid 0 succeeded")
	}
}

// TestServeProtocol drives the command loop with an external program (a
// built-in would re-execute the test binary).
func TestServeProtocol(t *testing.T) {
	old := eofPoll
	eofPoll = 0
	t.Cleanup(func() { eofPoll = old })
	in := wire.Command{ID: 4, Argv: []string{"sh", "-c", "echo out; echo err >&2; exit 3"}}.Encode() +
		wire.Command{ID: 5, Background: true, Argv: []string{"/no/such/program"}}.Encode()
	var mu syncBuffer
	if err := serveOn(strings.NewReader(in), &mu); err != io.EOF {
		t.Fatalf("serveOn ended with %v, want EOF", err)
	}
	// The commands run in goroutines; wait for both ENDs.
	deadline := time.Now().Add(20 * time.Second)
	var replies map[uint64][]wire.Reply
	for {
		replies = map[uint64][]wire.Reply{}
		sc := bufio.NewScanner(strings.NewReader(mu.String()))
		ends := 0
		for sc.Scan() {
			r, ok, err := wire.ParseReply(sc.Text())
			if err != nil {
				t.Fatal(err)
			}
			if ok && r.Kind != wire.KindReady {
				replies[r.ID] = append(replies[r.ID], r)
				if r.Kind == wire.KindEnd {
					ends++
				}
			}
		}
		if ends == 2 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	var out bytes.Buffer
	code4 := 99
	for _, r := range replies[4] {
		switch r.Kind {
		case wire.KindOut:
			out.Write(r.Data)
		case wire.KindEnd:
			code4 = r.Int
		}
	}
	if code4 != 3 || !strings.Contains(out.String(), "out") || !strings.Contains(out.String(), "err") {
		t.Errorf("command 4: exit %d, output %q; replies %v", code4, out.String(), replies[4])
	}
	r5 := replies[5]
	if len(r5) == 0 || r5[len(r5)-1].Kind != wire.KindEnd || r5[len(r5)-1].Int != -1 {
		t.Errorf("a program that cannot start should end with -1: %v", r5)
	}
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
