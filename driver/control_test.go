package driver

import (
	"encoding/binary"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestControlMessageShorterThanHeaderRejected(t *testing.T) {
	for n := 0; n < controlHeaderLen; n++ {
		if _, err := parseControl(make([]byte, n), binary.LittleEndian); !errors.Is(err, ErrControl) {
			t.Errorf("%d-byte message: err = %v, want ErrControl", n, err)
		}
	}
}

func TestControlMessageRoundTrip(t *testing.T) {
	for _, order := range []binary.ByteOrder{binary.LittleEndian, binary.BigEndian} {
		b := make([]byte, 12)
		putControl(b, order, 0xdeadbeef, ctrlPortOpen, 1)
		copy(b[8:], "abcd")
		m, err := parseControl(b, order)
		if err != nil {
			t.Fatal(err)
		}
		if m.ID != 0xdeadbeef || m.Event != ctrlPortOpen || m.Value != 1 || string(m.Payload) != "abcd" {
			t.Errorf("%v: got %+v", order, m)
		}
	}
	// The wire layout is spec 5.3.6.2: le32 id, le16 event, le16 value.
	b := make([]byte, 8)
	putControl(b, binary.LittleEndian, badPortID, ctrlDeviceReady, 1)
	if want := []byte{0xff, 0xff, 0xff, 0xff, 0, 0, 1, 0}; string(b) != string(want) {
		t.Errorf("DEVICE_READY encodes as % x, want % x", b, want)
	}
}

func TestPortNameWithQEMUTrailingNUL(t *testing.T) {
	for _, in := range []string{"org.qemu.guest_agent.0\x00", "org.qemu.guest_agent.0"} {
		got, err := parsePortName([]byte(in))
		if err != nil || got != "org.qemu.guest_agent.0" {
			t.Errorf("parsePortName(%q) = %q, %v", in, got, err)
		}
	}
}

func TestPortNameRejectedWhenUnsafeAsSocketName(t *testing.T) {
	bad := []string{
		"", "\x00", ".", "..", "../x", "a/b", "/", "a\x00b", "a\x00b\x00", "ab\x00\x00",
		"\xff\xfe", "caf\xc3", strings.Repeat("n", MaxNameLen+1),
	}
	for _, in := range bad {
		if got, err := parsePortName([]byte(in)); !errors.Is(err, ErrControl) {
			t.Errorf("parsePortName(%q) = %q, %v; want ErrControl", in, got, err)
		}
	}
	ok := []string{"x", "...", "café", strings.Repeat("n", MaxNameLen), "com.redhat.spice.0"}
	for _, in := range ok {
		if got, err := parsePortName([]byte(in)); err != nil || got != in {
			t.Errorf("parsePortName(%q) = %q, %v", in, got, err)
		}
	}
}

func TestResizePayloadOrderConfigurable(t *testing.T) {
	p := []byte{24, 0, 80, 0} // first field 24, second 80
	c, r, err := parseResize(p, binary.LittleEndian, ResizeRowsCols)
	if err != nil || c != 80 || r != 24 {
		t.Errorf("rows-first: cols %d rows %d err %v, want 80x24", c, r, err)
	}
	c, r, err = parseResize(p, binary.LittleEndian, ResizeColsRows)
	if err != nil || c != 24 || r != 80 {
		t.Errorf("spec order: cols %d rows %d err %v, want 24x80", c, r, err)
	}
	if _, _, err := parseResize(p[:3], binary.LittleEndian, ResizeColsRows); !errors.Is(err, ErrControl) {
		t.Errorf("short payload: err = %v", err)
	}
	if _, _, err := parseResize([]byte{0xff, 0xff, 1, 0}, binary.LittleEndian, ResizeColsRows); !errors.Is(err, ErrControl) {
		t.Errorf("absurd size: err = %v", err)
	}
}

// FuzzControlMessage feeds arbitrary device-written control buffers through
// every parser the driver applies to them. None may panic; whatever is
// accepted must satisfy the invariants the rest of the driver relies on.
func FuzzControlMessage(f *testing.F) {
	seed := func(id uint32, ev, val uint16, payload string) []byte {
		b := make([]byte, 8+len(payload))
		putControl(b, binary.LittleEndian, id, ev, val)
		copy(b[8:], payload)
		return b
	}
	f.Add(seed(1, ctrlPortAdd, 1, ""))
	f.Add(seed(1, ctrlPortName, 1, "org.qemu.guest_agent.0\x00"))
	f.Add(seed(2, ctrlPortName, 1, "a/b"))
	f.Add(seed(0, ctrlConsolePort, 1, ""))
	f.Add(seed(0, ctrlResize, 0, "\x18\x00\x50\x00"))
	f.Add(seed(3, ctrlPortOpen, 1, ""))
	f.Add(seed(0xffffffff, 99, 7, "junk"))
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parseControl(b, binary.LittleEndian)
		if err != nil {
			if len(b) >= controlHeaderLen {
				t.Fatalf("rejected a %d-byte message: %v", len(b), err)
			}
			return
		}
		if len(m.Payload) != len(b)-controlHeaderLen {
			t.Fatalf("payload %d bytes of a %d-byte message", len(m.Payload), len(b))
		}
		if name, err := parsePortName(m.Payload); err == nil {
			if name == "" || len(name) > MaxNameLen || !utf8.ValidString(name) ||
				strings.ContainsAny(name, "/\x00") || name == "." || name == ".." {
				t.Fatalf("accepted unsafe name %q", name)
			}
		}
		for _, ro := range []ResizeOrder{ResizeRowsCols, ResizeColsRows} {
			if c, r, err := parseResize(m.Payload, binary.LittleEndian, ro); err == nil && (c > maxConsoleDim || r > maxConsoleDim) {
				t.Fatalf("accepted size %dx%d", c, r)
			}
		}
		_ = ctrlName(m.Event)
	})
}
