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
	return NewConfig(rec), rec, path
}

func TestConfigEnableTouchesOnlyCommand(t *testing.T) {
	c, rec, path := fakeConfig(t)
	if err := c.Enable(); err != nil {
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
	if err := c.Enable(); err != nil {
		t.Fatal(err)
	}
	// The kernel masks INTx on an interrupt (a 16-bit read-modify-write of
	// the command register). Unmask must write the whole register from its
	// cache, with Interrupt Disable clear and everything else as enabled.
	simulateIRQMask := func() {
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.WriteAt([]byte{0x07, 0x04}, 4); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 3; i++ {
		simulateIRQMask()
		rec.log = nil
		if err := c.unmaskIntx(); err != nil {
			t.Fatal(err)
		}
		if want := []string{"w 0x4 07 00"}; !reflect.DeepEqual(rec.log, want) {
			t.Errorf("round %d: accesses %q, want %q", i, rec.log, want)
		}
		b, _ := os.ReadFile(path)
		if b[4] != 0x07 || b[5] != 0x00 || b[6] != 0x18 || b[7] != 0xf9 {
			t.Errorf("round %d: command/status = % x, want 07 00 18 f9", i, b[4:8])
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
	want := []string{"r 0x4 2", "w 0x4 03 00", "w 0x4 03 00"}
	if !reflect.DeepEqual(rec.log, want) {
		t.Errorf("accesses %q, want %q", rec.log, want)
	}
	b, _ := os.ReadFile(path)
	if b[4] != 0x03 || b[5] != 0x00 {
		t.Errorf("command = % x, want 03 00", b[4:6])
	}
}

func TestConfigUnmaskFollowsOwnCommandWrites(t *testing.T) {
	c, rec, _ := fakeConfig(t)
	if err := c.Enable(); err != nil {
		t.Fatal(err)
	}
	// The driver clears Bus Master through WriteAt (as a recovery or
	// shutdown would); the next unmask must not set it again.
	if _, err := c.WriteAt([]byte{0x03, 0x00}, cfgCommand); err != nil {
		t.Fatal(err)
	}
	rec.log = nil
	if err := c.unmaskIntx(); err != nil {
		t.Fatal(err)
	}
	if want := []string{"w 0x4 03 00"}; !reflect.DeepEqual(rec.log, want) {
		t.Errorf("accesses %q, want %q", rec.log, want)
	}
	if err := c.DisableBusMaster(); err != nil {
		t.Fatal(err)
	}
	rec.log = nil
	if err := c.unmaskIntx(); err != nil {
		t.Fatal(err)
	}
	if want := []string{"w 0x4 03 00"}; !reflect.DeepEqual(rec.log, want) {
		t.Errorf("after DisableBusMaster: accesses %q, want %q", rec.log, want)
	}
}

// qemuINTx models how QEMU (7.2, the version the guest tests run) routes a
// PCI function's INTx line: the device's level reaches the interrupt
// controller only while Interrupt Disable is clear, and a command-register
// write re-evaluates the line only if it covers byte 4
// (pci_default_write_config: range_covers_byte(addr, len, PCI_COMMAND)).
type qemuINTx struct {
	cfg    [256]byte
	device bool // the device's INTx level (ISR bit set, not yet read)
	pin    int  // what the interrupt controller sees (QEMU's irq_count)
}

func (m *qemuINTx) disabled() bool { return m.cfg[5]&0x04 != 0 }

func (m *qemuINTx) ReadAt(p []byte, off int64) (int, error) {
	m.cfg[6] &^= 0x08
	if m.device {
		m.cfg[6] |= 0x08 // Interrupt Status
	}
	return copy(p, m.cfg[off:]), nil
}

func (m *qemuINTx) WriteAt(p []byte, off int64) (int, error) {
	was := m.disabled()
	n := copy(m.cfg[off:], p)
	if off <= cfgCommand && off+int64(n) > cfgCommand && m.disabled() != was && m.device {
		if m.disabled() {
			m.pin--
		} else {
			m.pin++
		}
	}
	return n, nil
}

func (m *qemuINTx) Close() error { return nil }

// set changes the device's level (raise: virtio_notify; lower: ISR read).
func (m *qemuINTx) set(level bool) {
	if level == m.device {
		return
	}
	m.device = level
	if !m.disabled() {
		if level {
			m.pin++
		} else {
			m.pin--
		}
	}
}

// kernelMask is uio_pci_generic's handler: a 16-bit write of the command
// register with Interrupt Disable set.
func (m *qemuINTx) kernelMask() {
	m.WriteAt([]byte{m.cfg[4], m.cfg[5] | 0x04}, cfgCommand)
}

// TestUnmaskDeliversInterruptRaisedWhileMasked pins the guest→host hang seen
// with vserial-agent under QEMU: the device used buffers (raising INTx)
// after the driver had read the ISR but before it unmasked; the unmask was
// a one-byte write at offset 5, which QEMU does not act on, so the line
// stayed down at the interrupt controller with the device's ISR set, and
// no interrupt ever came again.
func TestUnmaskDeliversInterruptRaisedWhileMasked(t *testing.T) {
	for _, enabled := range []bool{true, false} {
		m := &qemuINTx{}
		m.cfg[4] = 0x07
		c := NewConfig(m)
		if enabled {
			if err := c.Enable(); err != nil {
				t.Fatal(err)
			}
		}
		for round := range 3 {
			m.set(true) // buffers used: interrupt
			if m.pin == 0 {
				t.Fatalf("enabled=%v round %d: model: raised line not seen", enabled, round)
			}
			m.kernelMask()
			m.set(false) // the driver reads the ISR
			m.set(true)  // more buffers used, still masked
			if err := c.unmaskIntx(); err != nil {
				t.Fatal(err)
			}
			if m.pin <= 0 {
				t.Fatalf("enabled=%v round %d: after Unmask the device asserts INTx but the interrupt controller sees %d: the interrupt is lost", enabled, round, m.pin)
			}
			m.kernelMask()
			m.set(false)
			if err := c.unmaskIntx(); err != nil {
				t.Fatal(err)
			}
			if m.pin != 0 {
				t.Fatalf("enabled=%v round %d: line level %d with nothing pending", enabled, round, m.pin)
			}
		}
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
