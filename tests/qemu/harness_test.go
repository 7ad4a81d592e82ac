package qemu

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/u-root/u-root/pkg/cpio"
)

// fakeBzImage builds a minimal bzImage: setup sectors with the boot header
// fields ExtractVmlinux reads, then a protected-mode part holding the
// compressed payload and the size the kernel build appends.
func fakeBzImage(t *testing.T, compressed []byte, size uint32) []byte {
	t.Helper()
	const setupSects = 3
	img := make([]byte, (setupSects+1)*512+64)
	img[hdrSetupSects] = setupSects
	copy(img[hdrMagic:], "HdrS")
	binary.LittleEndian.PutUint16(img[hdrVersion:], 0x020f)
	payload := binary.LittleEndian.AppendUint32(append([]byte(nil), compressed...), size)
	binary.LittleEndian.PutUint32(img[hdrPayloadOffset:], 64)
	binary.LittleEndian.PutUint32(img[hdrPayloadLength:], uint32(len(payload)))
	return append(img, append(payload, "trailing setup data"...)...)
}

var fakeELF = append([]byte("\x7fELF"), bytes.Repeat([]byte("kernel text "), 1000)...)

func TestExtractVmlinuxGzip(t *testing.T) {
	var z bytes.Buffer
	zw := gzip.NewWriter(&z)
	zw.Write(fakeELF)
	zw.Close()
	got, err := ExtractVmlinux(fakeBzImage(t, z.Bytes(), uint32(len(fakeELF))))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, fakeELF) {
		t.Fatalf("extracted %d bytes, want the %d-byte ELF", len(got), len(fakeELF))
	}
	// A size field that disagrees with the payload is an error, not a
	// truncated kernel.
	if _, err := ExtractVmlinux(fakeBzImage(t, z.Bytes(), uint32(len(fakeELF)+1))); err == nil {
		t.Error("accepted a payload whose size does not match the header")
	}
}

func TestExtractVmlinuxXZ(t *testing.T) {
	if _, err := exec.LookPath("xz"); err != nil {
		t.Skip("needs xz: run scripts/deps")
	}
	// The kernel uses the CRC32 check (xz_wrap.sh), like this.
	cmd := exec.Command("xz", "-c", "--check=crc32")
	cmd.Stdin = bytes.NewReader(fakeELF)
	z, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	got, err := ExtractVmlinux(fakeBzImage(t, z, uint32(len(fakeELF))))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, fakeELF) {
		t.Fatal("xz payload extracted wrongly")
	}
}

func TestExtractVmlinuxRejects(t *testing.T) {
	good := fakeBzImage(t, []byte{0x1f, 0x8b, 0, 0, 0, 0}, 10)
	bigLen := bytes.Clone(good)
	binary.LittleEndian.PutUint32(bigLen[hdrPayloadLength:], 1<<30)
	oldProto := bytes.Clone(good)
	binary.LittleEndian.PutUint16(oldProto[hdrVersion:], 0x0206)
	unknown := fakeBzImage(t, []byte("BZh91AY&SY"), 10)
	for name, img := range map[string][]byte{
		"empty": nil, "not a bzImage": make([]byte, 4096), "payload past the end": bigLen,
		"old boot protocol": oldProto, "unknown compression": unknown, "truncated gzip": good,
	} {
		if _, err := ExtractVmlinux(img); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestNewcArchiveReadsBack pins what the kernel's unpacker is given:
// parents before children, once each and mode 0755; files with their modes
// (0 meaning 0644 for Data, 0755 for Src); symlinks; the last of two files
// with one destination; inode numbers above the base image's.
func TestNewcArchiveReadsBack(t *testing.T) {
	src := filepath.Join(t.TempDir(), "helper")
	if err := os.WriteFile(src, []byte("odd-length!"), 0o600); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	err := writeArchive(&buf, []File{
		{Dst: "/lib/modules/6.1.0/kernel/drivers/char/virtio_console.ko", Data: []byte("module")},
		{Dst: "/lib/modules/6.1.0/modules.dep", Data: []byte("old")},
		{Dst: "/bin/vsguest", Src: src},
		{Dst: "/sbin/modprobe", Symlink: "/bin/vsguest"},
		{Dst: "/lib/modules/6.1.0/modules.dep", Data: []byte("a.ko:\n"), Mode: 0o600},
		{Dst: "/bin/setuid", Data: []byte("x"), Mode: 0o4711},
	})
	if err != nil {
		t.Fatal(err)
	}
	if buf.Len()%4 != 0 {
		t.Errorf("archive length %d is not 4-aligned", buf.Len())
	}
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(buf.Bytes())))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	inos := map[uint64]bool{}
	for _, r := range recs {
		line := fmt.Sprintf("%s %o %d", r.Name, r.Mode, r.NLink)
		if r.Mode&cpio.S_IFMT == cpio.S_IFREG || r.Mode&cpio.S_IFMT == cpio.S_IFLNK {
			b, err := io.ReadAll(io.NewSectionReader(r.ReaderAt, 0, int64(r.FileSize)))
			if err != nil {
				t.Fatal(err)
			}
			line += " " + string(b)
		}
		got = append(got, line)
		if r.Ino <= firstIno || inos[r.Ino] || r.UID != 0 || r.GID != 0 {
			t.Errorf("%s: inode %d (or owner %d:%d) not fresh and above the base image's", r.Name, r.Ino, r.UID, r.GID)
		}
		inos[r.Ino] = true
	}
	want := []string{
		"bin 40755 2", "bin/setuid 104711 1 x", "bin/vsguest 100755 1 odd-length!",
		"lib 40755 2", "lib/modules 40755 2", "lib/modules/6.1.0 40755 2", "lib/modules/6.1.0/kernel 40755 2",
		"lib/modules/6.1.0/kernel/drivers 40755 2", "lib/modules/6.1.0/kernel/drivers/char 40755 2",
		"lib/modules/6.1.0/kernel/drivers/char/virtio_console.ko 100644 1 module",
		"lib/modules/6.1.0/modules.dep 100600 1 a.ko:\n",
		"sbin 40755 2", "sbin/modprobe 120777 1 /bin/vsguest",
	}
	if !slices.Equal(got, want) {
		t.Errorf("records\n got %q\nwant %q", got, want)
	}
}

func TestUnmetRequirements(t *testing.T) {
	all := func(string) (string, error) { return "/usr/bin/x", nil }
	noQEMU := func(cmd string) (string, error) {
		if cmd == "qemu-system-x86_64" || cmd == "zstd" {
			return "", exec.ErrNotFound
		}
		return "/usr/bin/" + cmd, nil
	}
	if msg, fail := unmet(missingTools(all), true); msg != "" || fail {
		t.Errorf("nothing missing: got %q, fail=%v", msg, fail)
	}
	miss := missingTools(noQEMU)
	msg, fail := unmet(miss, false)
	if fail || !strings.Contains(msg, "qemu-system-x86_64") || !strings.Contains(msg, "scripts/deps") ||
		!strings.Contains(msg, "qemu-system-x86 zstd") {
		t.Errorf("skip message %q (fail=%v) should name the tools, the packages and scripts/deps", msg, fail)
	}
	if msg, fail := unmet(miss, true); !fail || !strings.Contains(msg, EnvRequired) {
		t.Errorf("with %s set: %q, fail=%v; want a failure that names the variable", EnvRequired, msg, fail)
	}
}

func TestShellJoin(t *testing.T) {
	got := shellJoin([]string{"qemu", "-append", "console=ttyS0 panic=-1", "it's", ""})
	want := `qemu -append 'console=ttyS0 panic=-1' 'it'\''s' ''`
	if got != want {
		t.Errorf("shellJoin = %s, want %s", got, want)
	}
}

// fakeQMP serves one QMP client: greeting, capabilities, then the replies
// and events the test scripts.
func fakeQMP(t *testing.T, script func(r *bufio.Reader, w io.Writer)) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "qmp")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		r := bufio.NewReader(c)
		io.WriteString(c, `{"QMP": {"version": {}, "capabilities": []}}`+"\n")
		if line, _ := r.ReadString('\n'); strings.Contains(line, "qmp_capabilities") {
			io.WriteString(c, `{"return": {}}`+"\n")
		}
		script(r, c)
	}()
	return sock
}

// dialFakeQMP connects a client to a fakeQMP socket, with a context of
// ten seconds; both end with the test.
func dialFakeQMP(t *testing.T, sock string) (context.Context, *QMP) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	t.Cleanup(cancel)
	q, err := DialQMP(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	return ctx, q
}

func TestQMPClient(t *testing.T) {
	sock := fakeQMP(t, func(r *bufio.Reader, w io.Writer) {
		r.ReadString('\n') // device_del
		io.WriteString(w, `{"event": "VSERPORT_CHANGE", "data": {"id": "port1", "open": true}}`+"\n")
		io.WriteString(w, `{"error": {"class": "DeviceNotFound", "desc": "no port9"}}`+"\n")
		r.ReadString('\n') // query-status
		io.WriteString(w, `{"event": "VSERPORT_CHANGE", "data": {"id": "port1", "open": false}}`+"\n")
		io.WriteString(w, `{"return": {"status": "running"}}`+"\n")
		r.ReadString('\n')
	})
	ctx, q := dialFakeQMP(t, sock)
	mark := q.Mark()
	_, err := q.Execute(ctx, "device_del", map[string]any{"id": "port9"})
	var qe *QMPError
	if !errors.As(err, &qe) || qe.Class != "DeviceNotFound" || qe.Command != "device_del" {
		t.Fatalf("device_del error = %v, want a DeviceNotFound QMPError", err)
	}
	ret, err := q.Execute(ctx, "query-status", nil)
	if err != nil {
		t.Fatal(err)
	}
	var st struct{ Status string }
	if json.Unmarshal(ret, &st); st.Status != "running" {
		t.Errorf("query-status returned %s", ret)
	}
	next, err := q.WaitPortChange(ctx, mark, "port1", true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := q.WaitPortChange(ctx, next, "port1", false); err != nil {
		t.Fatal(err)
	}
	// Nothing further: waiting times out instead of matching an old event.
	short, cancel2 := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel2()
	if _, err := q.WaitPortChange(short, next+1, "port1", true); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("waiting past the last event: %v, want a deadline error", err)
	}
}

func TestParseKV(t *testing.T) {
	kv := ParseKV("bytes=8 sha256=ab secs=0.5 mbps=16.000\nnoise")
	if kv["bytes"] != "8" || kv["sha256"] != "ab" || kv["mbps"] != "16.000" || len(kv) != 4 {
		t.Errorf("ParseKV = %v", kv)
	}
	tr, err := parseTransfer("bytes=8 sha256=ab secs=0.5 mbps=16.000\n")
	if err != nil || tr.Bytes != 8 || tr.MBps != 16 {
		t.Errorf("parseTransfer = %+v, %v", tr, err)
	}
	if _, err := parseTransfer("vsguest sink: after 3 of 8 bytes: EOF"); err == nil {
		t.Error("parseTransfer accepted an error message")
	}
}
