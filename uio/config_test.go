package uio

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// recorder logs every config access as "r OFF LEN" / "w OFF % x".
type recorder struct {
	*os.File
	log []string
}

func (r *recorder) ReadAt(p []byte, off int64) (int, error) {
	r.log = append(r.log, fmt.Sprintf("r %#x %d", off, len(p)))
	return r.File.ReadAt(p, off)
}

func (r *recorder) WriteAt(p []byte, off int64) (int, error) {
	r.log = append(r.log, fmt.Sprintf("w %#x % x", off, p))
	return r.File.WriteAt(p, off)
}

// fakeConfig writes a 256-byte config space: command = Interrupt Disable set
// and decoding on, as uio_pci_generic leaves it after an interrupt in a
// previous session; status = capabilities list, INTx pending and every
// write-one-to-clear error bit set.
func fakeConfig(t *testing.T) (*Config, *recorder, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config")
	b := make([]byte, 256)
	b[0], b[1], b[2], b[3] = 0xf4, 0x1a, 0x43, 0x10
	b[4], b[5] = 0x03, 0x04 // command: IO|MEM, INTx disable
	b[6], b[7] = 0x18, 0xf9 // status
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{File: f}
	t.Cleanup(func() { f.Close() })
	return newConfig(rec), rec, path
}

func TestConfigEnableTouchesOnlyCommand(t *testing.T) {
	c, rec, path := fakeConfig(t)
	if err := c.enable(); err != nil {
		t.Fatal(err)
	}
	want := []string{"r 0x4 2", "w 0x4 07 00"}
	if !reflect.DeepEqual(rec.log, want) {
		t.Errorf("accesses %q, want %q (16-bit command only, never status)", rec.log, want)
	}
	b, _ := os.ReadFile(path)
	if b[4] != 0x07 || b[5] != 0x00 || b[6] != 0x18 || b[7] != 0xf9 {
		t.Errorf("command/status = % x", b[4:8])
	}
}

func TestConfigUnmaskCachedRMW(t *testing.T) {
	c, rec, path := fakeConfig(t)
	if err := c.enable(); err != nil {
		t.Fatal(err)
	}
	// The kernel masks INTx on an interrupt; it also (in this test) leaves
	// byte 4 alone. Unmask must write byte 5 only, from its cache.
	simulateIRQMask := func() {
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.WriteAt([]byte{0x04}, 5); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 3; i++ {
		simulateIRQMask()
		rec.log = nil
		if err := c.unmaskIntx(); err != nil {
			t.Fatal(err)
		}
		if want := []string{"w 0x5 00"}; !reflect.DeepEqual(rec.log, want) {
			t.Errorf("round %d: accesses %q, want %q", i, rec.log, want)
		}
		b, _ := os.ReadFile(path)
		if b[4] != 0x07 || b[5] != 0x00 {
			t.Errorf("round %d: command = % x, want 07 00", i, b[4:6])
		}
	}
}

func TestConfigUnmaskWithoutEnableReadsOnce(t *testing.T) {
	c, rec, path := fakeConfig(t)
	for i := 0; i < 2; i++ {
		if err := c.unmaskIntx(); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{"r 0x5 1", "w 0x5 00", "w 0x5 00"}
	if !reflect.DeepEqual(rec.log, want) {
		t.Errorf("accesses %q, want %q", rec.log, want)
	}
	b, _ := os.ReadFile(path)
	if b[4] != 0x03 || b[5] != 0x00 {
		t.Errorf("command = % x, want 03 00", b[4:6])
	}
}

func TestConfigErrorsNameTheAccess(t *testing.T) {
	c, _, _ := fakeConfig(t)
	var p [4]byte
	_, err := c.ReadAt(p[:], 0x1000) // past the 256-byte file
	if err == nil {
		t.Fatal("read past config space succeeded")
	}
	if got := err.Error(); got != "uio: config read 4 bytes at 0x1000: EOF" {
		t.Errorf("error %q", got)
	}
}
