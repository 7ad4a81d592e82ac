package virtiotest_test

import (
	"encoding/binary"
	"strings"
	"testing"

	"github.com/vserial/vserial/driver/virtiotest"
)

func model() *virtiotest.NullModel {
	return &virtiotest.NullModel{
		Offered: 1<<1 | 1<<29,
		Sizes:   []uint16{128, 128, 32, 32},
		Cfg:     make([]byte, 12),
	}
}

func newFunc(t *testing.T, m virtiotest.Model, opts virtiotest.Options) *virtiotest.Function {
	t.Helper()
	f, err := virtiotest.New(m, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func cfg16(t *testing.T, f *virtiotest.Function, off int64) uint16 {
	t.Helper()
	var b [2]byte
	if _, err := f.Config().ReadAt(b[:], off); err != nil {
		t.Fatal(err)
	}
	return binary.LittleEndian.Uint16(b[:])
}

func cfg8(t *testing.T, f *virtiotest.Function, off int64) uint8 {
	t.Helper()
	var b [1]byte
	if _, err := f.Config().ReadAt(b[:], off); err != nil {
		t.Fatal(err)
	}
	return b[0]
}

// want checks that exactly the violations containing each of subs were
// recorded, then clears them.
func wantViolations(t *testing.T, f *virtiotest.Function, subs ...string) {
	t.Helper()
	v := f.Violations()
	if len(v) != len(subs) {
		t.Fatalf("violations %v, want %d matching %q", v, len(subs), subs)
	}
	for i, s := range subs {
		if !strings.Contains(v[i].Error(), s) {
			t.Errorf("violation %d = %q, want it to mention %q", i, v[i], s)
		}
	}
	f.ClearViolations()
}

// VIRTIO-NOTES 1: identification of modern-only, transitional and legacy
// console functions.
func TestPCIIdentity(t *testing.T) {
	for _, tc := range []struct {
		name              string
		opts              virtiotest.Options
		dev, subsys       uint16
		rev               uint8
		bar0, bar4, caps1 bool
	}{
		{"modern", virtiotest.Options{}, 0x1043, 0x1100, 1, false, true, true},
		{"transitional", virtiotest.Options{Transitional: true}, 0x1003, 3, 0, true, true, true},
		{"legacy", virtiotest.Options{LegacyOnly: true}, 0x1003, 3, 0, true, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFunc(t, model(), tc.opts)
			if v := cfg16(t, f, 0); v != virtiotest.VendorID {
				t.Errorf("vendor %#x", v)
			}
			if v := cfg16(t, f, 2); v != tc.dev {
				t.Errorf("device %#x, want %#x", v, tc.dev)
			}
			if v := cfg16(t, f, 0x2e); v != tc.subsys {
				t.Errorf("subsystem device %#x, want %#x", v, tc.subsys)
			}
			if v := cfg8(t, f, 8); v != tc.rev {
				t.Errorf("revision %d, want %d", v, tc.rev)
			}
			if v := cfg16(t, f, 0x0a); v != 0x0780 {
				t.Errorf("class %#x", v)
			}
			if cfg16(t, f, 6)&(1<<4) == 0 {
				t.Error("capability list bit clear")
			}
			_, err := f.BAR(0)
			if (err == nil) != tc.bar0 {
				t.Errorf("BAR0: %v", err)
			}
			_, err = f.BAR(4)
			if (err == nil) != tc.bar4 {
				t.Errorf("BAR4: %v", err)
			}
			// Walk the list: MSI-X always, vendor caps unless legacy-only.
			vendor, msix := 0, 0
			for at := cfg8(t, f, 0x34); at != 0; at = cfg8(t, f, int64(at)+1) {
				switch cfg8(t, f, int64(at)) {
				case 0x09:
					vendor++
				case 0x11:
					msix++
				}
			}
			if msix != 1 || (vendor == 5) != tc.caps1 || (vendor == 0) == tc.caps1 {
				t.Errorf("%d vendor caps, %d MSI-X caps", vendor, msix)
			}
		})
	}
}

// Spec 4.1.3.1: each field with an access of its own width. The fake
// records anything else, as QEMU would mishandle it.
func TestWidthExactAccessesRecorded(t *testing.T) {
	f := newFunc(t, model(), virtiotest.Options{Transitional: true})
	b4, _ := f.BAR(4)
	b0, _ := f.BAR(0)
	if _, err := b4.Read32(20); err != nil { // device_status is 8 bits
		t.Fatal(err)
	}
	if err := b4.Write8(22, 1); err != nil { // queue_select is 16 bits
		t.Fatal(err)
	}
	if err := b4.Write32(0x3000, 0); err != nil { // doorbell is 16 bits
		t.Fatal(err)
	}
	if _, err := b4.Read16(0x1000); err != nil { // ISR is 8 bits
		t.Fatal(err)
	}
	if _, err := b0.Read32(16); err != nil { // QUEUE_NOTIFY is 16 bits (legacy)
		t.Fatal(err)
	}
	wantViolations(t, f, "common cfg read at 0x14 is 4 bytes", "common cfg write at 0x16 is 1 bytes",
		"notify write of 4 bytes", "ISR access of 2 bytes", "legacy header read at 0x10 is 4 bytes")
	if _, err := b4.Read16(1); err == nil {
		t.Error("misaligned 16-bit read succeeded")
	}
	if _, err := b4.Read32(0x4000); err == nil {
		t.Error("read past BAR4 succeeded")
	}
	if _, err := f.Config().ReadAt(make([]byte, 3), 0); err == nil {
		t.Error("3-byte config read succeeded")
	}
	wantViolations(t, f, "misaligned", "outside", "config space access of 3 bytes")
	// Device configuration may be read with any aligned width.
	for _, w := range []int{1, 2, 4} {
		switch w {
		case 1:
			_, _ = b4.Read8(0x2001)
		case 2:
			_, _ = b4.Read16(0x2002)
		case 4:
			_, _ = b4.Read32(0x2004)
		}
	}
	wantViolations(t, f)
}

// VIRTIO-NOTES 2.2, QEMU: writing anything but 1 to queue_enable puts the
// device in an error state.
func TestQueueEnableZeroRecorded(t *testing.T) {
	f := newFunc(t, model(), virtiotest.Options{})
	b4, _ := f.BAR(4)
	_ = b4.Write16(28, 0)
	wantViolations(t, f, "wrote 0 to queue_enable")
	if q, _ := f.Queue(0); q.Enabled {
		t.Fatal("queue enabled by writing 0")
	}
}

// QEMU quirk: QUEUE_PFN 0 resets the whole device.
func TestLegacyQueuePFNZeroResetsWholeDevice(t *testing.T) {
	m := model()
	f := newFunc(t, m, virtiotest.Options{LegacyOnly: true})
	b0, _ := f.BAR(0)
	_ = b0.Write8(18, 1|2)
	_ = b0.Write32(8, 0)
	if f.Status() != 0 || f.Resets() != 1 || m.Resets() != 1 {
		t.Fatalf("status %#x, resets %d, model resets %d", f.Status(), f.Resets(), m.Resets())
	}
	wantViolations(t, f, "QUEUE_PFN 0")
}

// QEMU quirk: legacy STATUS = ACKNOWLEDGE|DRIVER forces Bus Master on.
func TestLegacyStatus3ForcesBusMaster(t *testing.T) {
	f := newFunc(t, model(), virtiotest.Options{LegacyOnly: true})
	b0, _ := f.BAR(0)
	if cfg16(t, f, 4)&4 != 0 {
		t.Fatal("Bus Master on at start")
	}
	_ = b0.Write8(18, 1)
	_ = b0.Write8(18, 3)
	if cfg16(t, f, 4)&4 == 0 {
		t.Fatal("STATUS=3 did not force Bus Master on")
	}
}

// QEMU ignores the whole status write when it refuses FEATURES_OK (here:
// an unoffered bit accepted).
func TestFeaturesOKRefusedForUnofferedBit(t *testing.T) {
	f := newFunc(t, model(), virtiotest.Options{})
	b4, _ := f.BAR(4)
	_ = b4.Write8(20, 1|2)
	_ = b4.Write32(8, 0)
	_ = b4.Write32(12, 1<<1|1<<5) // bit 5 not offered
	_ = b4.Write32(8, 1)
	_ = b4.Write32(12, 1) // VERSION_1
	_ = b4.Write8(20, 1|2|8)
	if st, _ := b4.Read8(20); st != 1|2 {
		t.Fatalf("status %#x after refused FEATURES_OK, want 0x3", st)
	}
	wantViolations(t, f, "unoffered features 0x20")
}

// Spec 3.1.1: VERSION_1 is offered on the modern interface only; the
// legacy view hides bits above 31 and the modern one hides 24, 27, 30.
func TestFeatureViews(t *testing.T) {
	m := model()
	m.Offered |= 1<<24 | 1<<30
	f := newFunc(t, m, virtiotest.Options{Transitional: true})
	b4, _ := f.BAR(4)
	b0, _ := f.BAR(0)
	_ = b4.Write32(0, 1)
	if hi, _ := b4.Read32(4); hi != 1 {
		t.Errorf("modern high word %#x, want VERSION_1", hi)
	}
	_ = b4.Write32(0, 0)
	if lo, _ := b4.Read32(4); lo&(1<<24|1<<27|1<<30) != 0 {
		t.Errorf("modern low word %#x shows legacy-only bits", lo)
	}
	if lo, _ := b0.Read32(0); lo&(1<<30) == 0 || lo&(1<<1) == 0 {
		t.Errorf("legacy features %#x", lo)
	}
}

// QEMU virtio_error: NEEDS_RESET and a config interrupt with ISR 0x3.
func TestNeedsResetAfterDriverOK(t *testing.T) {
	m := model()
	f := newFunc(t, m, virtiotest.Options{LegacyOnly: true})
	b0, _ := f.BAR(0)
	_ = b0.Write8(18, 1|2|4)
	if m.Starts() != 1 {
		t.Fatalf("model started %d times", m.Starts())
	}
	m.Bus().NeedsReset()
	if st := f.Status(); st&64 == 0 {
		t.Fatalf("status %#x without NEEDS_RESET", st)
	}
	if isr, _ := b0.Read8(19); isr != 3 {
		t.Fatalf("ISR %#x, want 3", isr)
	}
	if f.Interrupts() != 1 {
		t.Fatalf("%d interrupts, want 1", f.Interrupts())
	}
}

// Spec 2.5.1 (driver requirements): no notification before DRIVER_OK on
// the modern interface.
func TestNotifyBeforeDriverOKRecorded(t *testing.T) {
	f := newFunc(t, model(), virtiotest.Options{})
	b4, _ := f.BAR(4)
	_ = b4.Write16(0x3000+4*2, 2)
	wantViolations(t, f, "notify of queue 2 before DRIVER_OK")
	if n := f.Notifies(); len(n) != 1 || n[0] != 2 {
		t.Fatalf("notifies %v, want [2] (queue taken from the address)", n)
	}
}

// The status register only loses bits through a reset.
func TestStatusBitsClearedOnlyByReset(t *testing.T) {
	f := newFunc(t, model(), virtiotest.Options{})
	b4, _ := f.BAR(4)
	_ = b4.Write8(20, 1|2)
	_ = b4.Write8(20, 1)
	wantViolations(t, f, "clears bits 0x2")
}

func TestConfigSpaceWritableBits(t *testing.T) {
	f := newFunc(t, model(), virtiotest.Options{})
	cs := f.Config()
	if _, err := cs.WriteAt([]byte{0xff, 0xff}, 0); err != nil { // vendor id: read-only
		t.Fatal(err)
	}
	if v := cfg16(t, f, 0); v != virtiotest.VendorID {
		t.Errorf("vendor id written: %#x", v)
	}
	if _, err := cs.WriteAt([]byte{0xff, 0xff}, 4); err != nil {
		t.Fatal(err)
	}
	if v := cfg16(t, f, 4); v != 0x0407 {
		t.Errorf("command %#x, want 0x407 (I/O, memory, master, INTx disable)", v)
	}
	// MSI-X enable through the capability's Message Control.
	var at int64
	for a := cfg8(t, f, 0x34); a != 0; a = cfg8(t, f, int64(a)+1) {
		if cfg8(t, f, int64(a)) == 0x11 {
			at = int64(a)
		}
	}
	ctl := cfg16(t, f, at+2)
	var b [2]byte
	binary.LittleEndian.PutUint16(b[:], ctl|1<<15|0x7ff)
	if _, err := cs.WriteAt(b[:], at+2); err != nil {
		t.Fatal(err)
	}
	if got := cfg16(t, f, at+2); got != ctl|1<<15 {
		t.Errorf("message control %#x, want %#x (only enable writable)", got, ctl|1<<15)
	}
	wantViolations(t, f)
}

// Options that QEMU cannot build are refused.
func TestNewRejectsImpossibleOptions(t *testing.T) {
	for _, o := range []virtiotest.Options{
		{LegacyOnly: true, Transitional: true},
		{IOMMUPlatform: true, Transitional: true},
		{MSIXVectors: -1},
	} {
		if f, err := virtiotest.New(model(), o); err == nil {
			f.Close()
			t.Errorf("New(%+v) succeeded", o)
		}
	}
}

// Spec 4.1.4.9: the PCI_CFG capability is a window onto the BARs through
// configuration space.
func TestPCICfgWindow(t *testing.T) {
	f := newFunc(t, model(), virtiotest.Options{})
	cs := f.Config()
	var at int64
	for a := cfg8(t, f, 0x34); a != 0; a = cfg8(t, f, int64(a)+1) {
		if cfg8(t, f, int64(a)) == 0x09 && cfg8(t, f, int64(a)+3) == 5 {
			at = int64(a)
		}
	}
	if at == 0 {
		t.Fatal("no PCI_CFG capability")
	}
	put := func(off int64, v uint32, n int) {
		t.Helper()
		b := make([]byte, 4)
		binary.LittleEndian.PutUint32(b, v)
		if _, err := cs.WriteAt(b[:n], off); err != nil {
			t.Fatal(err)
		}
	}
	// Write queue_select = 2 (common + 22, 16 bits) through the window.
	put(at+4, 4, 1)
	put(at+8, 22, 4)
	put(at+12, 2, 4)
	put(at+16, 2, 4)
	b4, _ := f.BAR(4)
	if sel, _ := b4.Read16(22); sel != 2 {
		t.Fatalf("queue_select %d after window write, want 2", sel)
	}
	// Read num_queues (common + 18) through the window.
	put(at+8, 18, 4)
	var d [4]byte
	if _, err := cs.ReadAt(d[:], at+16); err != nil {
		t.Fatal(err)
	}
	if n := binary.LittleEndian.Uint16(d[:]); n != 4 {
		t.Fatalf("num_queues %d through the window, want 4", n)
	}
	wantViolations(t, f)
}
