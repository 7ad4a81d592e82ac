package driver

import (
	"errors"
	"testing"
	"time"

	"github.com/vserial/vserial/driver/virtiotest"
	"github.com/vserial/vserial/ring/ringtest"
)

// F_SIZE, EMERG_WRITE and INDIRECT_DESC are accepted exactly when offered.
// INDIRECT_DESC used to be refused; it is taken now, as Linux takes it,
// though the driver's one-segment chains never use an indirect table.
func TestFeaturesSizeAndEmergWriteWhenOffered(t *testing.T) {
	const optional = FeatureConsoleSize | FeatureConsoleEmergWrite | FeatureIndirectDesc
	for _, c := range []struct {
		name string
		cfg  virtiotest.ConsoleConfig
		want uint64
	}{
		{"qemu default", virtiotest.ConsoleConfig{}, FeatureConsoleEmergWrite | FeatureIndirectDesc},
		{"size offered", virtiotest.ConsoleConfig{OfferSize: true}, FeatureConsoleEmergWrite | FeatureConsoleSize | FeatureIndirectDesc},
		{"machine type 2.7", virtiotest.ConsoleConfig{NoEmergWrite: true}, FeatureIndirectDesc},
		{"indirect_desc=off", virtiotest.ConsoleConfig{NoIndirect: true}, FeatureConsoleEmergWrite},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := newRig(t, rigOpts{console: c.cfg})
			got := r.f.Accepted()
			if got&optional != c.want {
				t.Errorf("accepted %#x, want F_SIZE|EMERG_WRITE|INDIRECT_DESC bits %#x", got, c.want)
			}
			base := FeatureConsoleMultiport | FeatureVersion1 | FeatureEventIdx
			if got&base != base {
				t.Errorf("accepted %#x, want at least %#x", got, base)
			}
			if r.d.Features() != got {
				t.Errorf("Features() %#x, device saw %#x", r.d.Features(), got)
			}
		})
	}
}

// Linux applies RESIZE only with F_SIZE negotiated: without it the message
// changes nothing and is not a violation.
func TestResizeIgnoredWithoutFSize(t *testing.T) {
	r := newRig(t, rigOpts{plug: plugPorts(portSpec{id: 0, name: "con", console: true}, portSpec{id: 1, name: "p", host: true})})
	p := r.port(0, "con")
	r.until("console", p.IsConsole)
	if !r.m.Resize(0, 80, 24, false) {
		t.Fatal("RESIZE found no buffer")
	}
	// A later message on another port is handled after the RESIZE: once it
	// shows, the RESIZE was handled too.
	p1 := r.port(1, "p")
	r.m.HostConnect(1, false)
	r.until("host disconnect", func() bool { return !p1.HostConnected() })
	if c, rw := p.Size(); c != 0 || rw != 0 {
		t.Errorf("size %dx%d after RESIZE without F_SIZE, want 0x0", c, rw)
	}
	if v := r.d.Stats().Violations; v != 0 {
		t.Errorf("%d violations", v)
	}
}

// With F_SIZE every RESIZE is applied and announced through Changed; an
// absurd size is a violation that leaves the size alone.
func TestResizeSequenceAndBadSize(t *testing.T) {
	r := newRig(t, rigOpts{
		console: virtiotest.ConsoleConfig{OfferSize: true},
		cfg:     Config{ResizeOrder: ResizeColsRows},
		plug:    plugPorts(portSpec{id: 0, name: "con", console: true}),
	})
	p := r.port(0, "con")
	r.until("console", p.IsConsole)
	for _, sz := range [][2]uint16{{80, 24}, {132, 43}, {1, 1}} {
		ch := p.Changed()
		r.m.Resize(0, sz[0], sz[1], true)
		<-ch
		if c, rw := p.Size(); c != sz[0] || rw != sz[1] {
			t.Fatalf("size %dx%d, want %dx%d", c, rw, sz[0], sz[1])
		}
	}
	r.m.Resize(0, 60000, 24, true)
	r.until("violation", func() bool { return r.d.Stats().Violations == 1 })
	if c, rw := p.Size(); c != 1 || rw != 1 {
		t.Errorf("size %dx%d after a bad RESIZE, want 1x1 kept", c, rw)
	}
}

// Without MULTIPORT the size is in the configuration space: read at
// bring-up, and again on each configuration interrupt.
func TestConfigSizeSinglePort(t *testing.T) {
	m := func(c *virtiotest.Console) {
		plugPorts(portSpec{id: 0, console: true})(c)
		c.SetSize(100, 30) // before the driver: no interrupt, only the fields
	}
	for _, legacy := range []bool{false, true} {
		r := newRig(t, rigOpts{
			console: virtiotest.ConsoleConfig{MaxPorts: 1, OfferSize: true},
			fn:      virtiotest.Options{LegacyOnly: legacy},
			plug:    m,
		})
		p := r.port(0, "")
		if c, rw := p.Size(); c != 100 || rw != 30 {
			t.Fatalf("legacy %v: size %dx%d at start, want 100x30", legacy, c, rw)
		}
		ch := p.Changed()
		r.m.SetSize(120, 40)
		<-ch
		if c, rw := p.Size(); c != 120 || rw != 40 {
			t.Fatalf("legacy %v: size %dx%d after config change, want 120x40", legacy, c, rw)
		}
	}
}

// EmergencyWrite puts every non-zero byte on the host side of the first
// host-connected console port, through the configuration space only.
func TestEmergencyWrite(t *testing.T) {
	for _, legacy := range []bool{false, true} {
		r := newRig(t, rigOpts{
			fn:   virtiotest.Options{LegacyOnly: legacy},
			plug: plugPorts(portSpec{id: 0, name: "con", console: true}, portSpec{id: 1, name: "p", host: true}),
		})
		r.port(0, "con")
		msg := "vserial-agent: fatal: \x00test\n"
		if err := r.d.EmergencyWrite([]byte(msg)); err != nil {
			t.Fatalf("legacy %v: %v", legacy, err)
		}
		want := "vserial-agent: fatal: test\n"
		if got := string(r.m.HostRead(0)); got != want {
			t.Errorf("legacy %v: console host side got %q, want %q", legacy, got, want)
		}
		if got := r.m.HostRead(1); len(got) != 0 {
			t.Errorf("legacy %v: serial port got %q", legacy, got)
		}
		if b := r.m.EmergencyBytes(); len(b) != 0 {
			t.Errorf("legacy %v: %q found no console", legacy, b)
		}
	}
}

// After the device failed the emergency path still works (the last gasp);
// after Close it does not.
func TestEmergencyWriteAfterFailureNotAfterClose(t *testing.T) {
	r := newRig(t, rigOpts{cfg: Config{MaxResets: 1}, plug: plugPorts(portSpec{id: 0, name: "con", console: true}, portSpec{id: 1, name: "p", host: true})})
	r.port(0, "con")
	// Every control message comes back with a bad id: the reset does not
	// help and the device fails.
	r.m.MisbehaveRing(virtiotest.ControlRxQueue, ringtest.Misbehaviour{BadID: true}, true)
	r.m.SendControl(1, virtiotest.CtrlPortOpen, 0, nil)
	select {
	case <-r.d.Done():
	case <-r.ctx.Done():
		t.Fatalf("device never failed\n%s", r.log)
	}
	r.m.MisbehaveRing(virtiotest.ControlRxQueue, ringtest.Misbehaviour{}, false)
	if err := r.d.EmergencyWrite([]byte("bye")); err != nil {
		t.Fatalf("after failure: %v", err)
	}
	if got := string(r.m.HostRead(0)); got != "bye" {
		t.Errorf("host got %q", got)
	}
	if err := r.d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.d.EmergencyWrite([]byte("x")); !errors.Is(err, ErrClosed) {
		t.Errorf("after Close: %v, want ErrClosed", err)
	}
}

func TestEmergencyWriteNotNegotiated(t *testing.T) {
	r := newRig(t, rigOpts{console: virtiotest.ConsoleConfig{NoEmergWrite: true}, plug: plugPorts(portSpec{id: 0, name: "con", console: true})})
	r.port(0, "con")
	if err := r.d.EmergencyWrite([]byte("x")); !errors.Is(err, ErrNoEmergencyWrite) {
		t.Fatalf("got %v, want ErrNoEmergencyWrite", err)
	}
	if got := r.m.HostRead(0); len(got) != 0 {
		t.Errorf("host got %q", got)
	}
}

// LastGasp gets its line out while another goroutine holds the driver's
// lock for good (a panic under the lock), within its bound; after Close it
// refuses, held lock or not.
func TestLastGaspWithTheLockHeld(t *testing.T) {
	r := newRig(t, rigOpts{plug: plugPorts(portSpec{id: 0, name: "con", console: true})})
	r.port(0, "con")
	r.d.mu.Lock()
	t0 := time.Now()
	err := r.d.LastGasp([]byte("vserial-agent: fatal: panic\n"))
	took := time.Since(t0)
	r.d.mu.Unlock()
	if err != nil {
		t.Fatalf("LastGasp with the lock held: %v", err)
	}
	if took < lastGaspWait || took > testTimeout/4 {
		t.Errorf("LastGasp took %v with the lock held, want about %v", took, lastGaspWait)
	}
	if got := string(r.m.HostRead(0)); got != "vserial-agent: fatal: panic\n" {
		t.Errorf("host got %q", got)
	}
	if err := r.d.LastGasp([]byte("free")); err != nil || string(r.m.HostRead(0)) != "free" {
		t.Errorf("LastGasp with the lock free: %v", err)
	}
	if err := r.d.Close(); err != nil {
		t.Fatal(err)
	}
	r.d.mu.Lock()
	err = r.d.LastGasp([]byte("x"))
	r.d.mu.Unlock()
	if !errors.Is(err, ErrClosed) {
		t.Errorf("LastGasp after Close: %v, want ErrClosed", err)
	}
}
