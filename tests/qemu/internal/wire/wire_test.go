package wire

import (
	"bytes"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
)

func TestCommandRoundTrip(t *testing.T) {
	for _, c := range []Command{
		{ID: 1, Argv: []string{"modprobe", "virtio_pci"}},
		{ID: 1 << 40, Background: true, Argv: []string{"write", "/sys/x", "1af4 1043\n"}},
		{ID: 7, Argv: []string{"sh", "-c", "echo 'a b' \"c\"\t$x"}},
	} {
		line := c.Encode()
		if strings.Count(line, "\n") != 1 || !strings.HasSuffix(line, "\n") {
			t.Fatalf("Encode(%v) = %q: want exactly one trailing newline", c, line)
		}
		got, err := ParseCommand(strings.TrimSuffix(line, "\n") + "\r")
		if err != nil {
			t.Fatalf("ParseCommand(%q): %v", line, err)
		}
		if got.ID != c.ID || got.Background != c.Background || !slices.Equal(got.Argv, c.Argv) {
			t.Errorf("round trip of %+v gave %+v", c, got)
		}
	}
}

func TestParseCommandRejects(t *testing.T) {
	for _, line := range []string{"", "ls /dev", "C 1 fg", "C x fg YQ==", "C 1 zz YQ==", "C 1 fg !!!", "C 1 fg "} {
		if _, err := ParseCommand(line); err == nil {
			t.Errorf("ParseCommand(%q) accepted a bad line", line)
		}
	}
	if _, err := ParseCommand("ls /dev"); !errors.Is(err, ErrNotCommand) {
		t.Errorf("a human command line should give ErrNotCommand, got %v", err)
	}
}

func TestReplies(t *testing.T) {
	out := bytes.Repeat([]byte("0123456789\n"), 200) // several OUT chunks
	stream := "[    1.234] virtio_console: some kernel noise\n" +
		"garbage before the marker " + Ready() +
		PID(3, 77) + Out(3, out) + End(3, 2)
	var got bytes.Buffer
	var kinds []Kind
	for _, line := range strings.SplitAfter(stream, "\n") {
		r, ok, err := ParseReply(line)
		if err != nil {
			t.Fatalf("ParseReply(%q): %v", line, err)
		}
		if !ok {
			continue
		}
		kinds = append(kinds, r.Kind)
		switch r.Kind {
		case KindPID:
			if r.ID != 3 || r.Int != 77 {
				t.Errorf("PID reply %+v", r)
			}
		case KindOut:
			got.Write(r.Data)
		case KindEnd:
			if r.ID != 3 || r.Int != 2 {
				t.Errorf("END reply %+v", r)
			}
		case KindReady:
			if string(r.Data) != Version {
				t.Errorf("READY version %q", r.Data)
			}
		}
	}
	if !bytes.Equal(got.Bytes(), out) {
		t.Errorf("output reassembled to %d bytes, want %d", got.Len(), len(out))
	}
	if kinds[0] != KindReady || kinds[1] != KindPID || kinds[len(kinds)-1] != KindEnd || len(kinds) < 5 {
		t.Errorf("reply kinds %v", kinds)
	}
	for _, bad := range []string{Marker + "1 OUT !!", Marker + "x END 0", Marker + "1 WHAT 0", Marker + "1 END"} {
		if _, ok, err := ParseReply(bad); !ok || err == nil {
			t.Errorf("ParseReply(%q) = ok %v, err %v; want a marked line with an error", bad, ok, err)
		}
	}
}

func TestPatternIsDeterministicPerSeed(t *testing.T) {
	read := func(seed uint64, n int) []byte {
		b := make([]byte, n)
		if _, err := io.ReadFull(Pattern(seed), b); err != nil {
			t.Fatal(err)
		}
		return b
	}
	a, b, c := read(1, 4096), read(1, 4096), read(2, 4096)
	if !bytes.Equal(a, b) {
		t.Error("same seed gave different streams")
	}
	if bytes.Equal(a, c) {
		t.Error("different seeds gave the same stream")
	}
	// Reading in odd pieces must give the same stream as one read.
	p := Pattern(1)
	var pieces []byte
	for _, n := range []int{1, 7, 100, 3988} {
		buf := make([]byte, n)
		if _, err := io.ReadFull(p, buf); err != nil {
			t.Fatal(err)
		}
		pieces = append(pieces, buf...)
	}
	if !bytes.Equal(pieces, a) {
		t.Error("stream depends on read sizes")
	}
}

func TestMismatch(t *testing.T) {
	if i := Mismatch([]byte("abcd"), []byte("abcd")); i != -1 {
		t.Errorf("equal: %d", i)
	}
	if i := Mismatch([]byte("abXd"), []byte("abcd")); i != 2 {
		t.Errorf("differ at 2: %d", i)
	}
}

func TestVserialPathRoundTrip(t *testing.T) {
	for _, c := range []struct{ bind, addr, name, poll string }{
		{"uio", "0000:00:02.0", "org.vserial.bench", ""},
		{"vfio", "0000:00:03.0", "vport0p1", "off"},
	} {
		p := VserialPath(c.bind, c.addr, c.name, c.poll)
		spec, ok := strings.CutPrefix(p, VserialPrefix)
		if !ok {
			t.Fatalf("%q lacks the prefix", p)
		}
		b, a, n, pl, ok := ParseVserialPath(spec)
		if !ok || b != c.bind || a != c.addr || n != c.name || pl != c.poll {
			t.Errorf("%q parsed as %q %q %q %q %v", p, b, a, n, pl, ok)
		}
	}
	for _, bad := range []string{"", "uio", "uio/addr", "uio//name", "/addr/name", "uio/a/n/p/x"} {
		if _, _, _, _, ok := ParseVserialPath(bad); ok {
			t.Errorf("%q parsed", bad)
		}
	}
}
