package vserial

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vserial/vserial/agent"
	"github.com/vserial/vserial/driver"
	"github.com/vserial/vserial/driver/drivertest"
	"github.com/vserial/vserial/driver/virtiotest"
	"github.com/vserial/vserial/internal/devopen"
	"github.com/vserial/vserial/internal/supervisor"
	"github.com/vserial/vserial/pciscan/pciscantest"
	"github.com/vserial/vserial/pump"
)

const testTimeout = 20 * time.Second

// fakeAgent is an Agent over one fake device (QEMU-like) with port 1 "p"
// plugged and its host side connected, serving sockets in dir if not "".
// It goes through Open: a fake sysfs lists the function, and the opener
// hook brings the fake device up with its loop.
func fakeAgent(t *testing.T, dir string) (*Agent, *virtiotest.Console, context.Context, *driver.Device) {
	t.Helper()
	m := virtiotest.NewConsole(virtiotest.ConsoleConfig{})
	if err := m.Plug(1, "p", false); err != nil {
		t.Fatal(err)
	}
	if err := m.HostConnect(1, true); err != nil {
		t.Fatal(err)
	}
	f, err := virtiotest.New(m, virtiotest.Options{MSIXVectors: 2})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	sys := t.TempDir()
	pciscantest.Function(t, sys, "0000:00:03.0", "0x1af4", "0x1043", "0x1100", "")
	var dev *driver.Device
	open := func(ctx context.Context, spec supervisor.Spec) (supervisor.Device, error) {
		if _, err := f.IRQ().PollFDs(); err != nil {
			return nil, err
		}
		d, err := driver.Open(ctx, drivertest.Function(f), driver.Config{ExternalLoop: true, Index: spec.Index})
		if err != nil {
			return nil, err
		}
		loop, err := pump.New(d, pump.Options{Poll: spec.Poll})
		if err != nil {
			return nil, err
		}
		dev = d
		od := &devopen.Device{Dev: d, Loop: loop, Release: func() error { return nil }, GiveBack: func() {}}
		return supervisor.NewDevice(od, spec), nil
	}
	a, err := Open(supervisor.WithHooks(ctx, supervisor.Hooks{Open: open}), Options{SocketDir: dir, Sysfs: sys, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := a.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		f.Close()
	})
	return a, m, ctx, dev
}

func TestDialByNameHoldsThePort(t *testing.T) {
	a, m, ctx, dev := fakeAgent(t, "")
	c, err := a.Dial(ctx, "p")
	if err != nil {
		t.Fatal(err)
	}
	if !m.GuestConnected(1) {
		t.Fatal("Dial did not tell the host the port is open")
	}
	for _, name := range []string{"p", "vport0p1"} {
		if _, err := a.Dial(ctx, name); !errors.Is(err, ErrPortHeld) {
			t.Fatalf("second Dial %s: %v, want ErrPortHeld", name, err)
		}
	}
	c.SetDeadline(time.Now().Add(testTimeout))
	in := bytes.Repeat([]byte("host to guest "), 10000)
	if err := m.HostWrite(1, in); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(in))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, in) {
		t.Fatalf("host→guest: %v, equal %v", err, bytes.Equal(got, in))
	}
	out := bytes.Repeat([]byte("guest to host "), 10000)
	go c.Write(out)
	back, err := m.HostReadFull(ctx, 1, len(out))
	if err != nil || !bytes.Equal(back, out) {
		t.Fatalf("guest→host: %v", err)
	}
	if c.LocalAddr().String() != "p" || c.RemoteAddr().Network() != "vserial" {
		t.Errorf("addresses %v %v", c.LocalAddr(), c.RemoteAddr())
	}
	// Host bytes the conn did not read when it closed are discarded and
	// counted (QEMU sends nothing to a closed port).
	if err := m.HostWrite(1, []byte("nobody")); err != nil {
		t.Fatal(err)
	}
	p := dev.Port(1)
	for p.RxBuffered() == 0 && ctx.Err() == nil {
		time.Sleep(time.Millisecond)
	}
	before := p.Stats().Discarded
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if d := p.Stats().Discarded - before; d != 6 {
		t.Errorf("Close discarded %d bytes, want the 6 unread", d)
	}
	if err := m.WaitFor(ctx, func() bool { return !m.GuestConnected(1) }); err != nil {
		t.Fatal("Close did not tell the host the port closed")
	}
	// Free again, under its kernel name too.
	c2, err := a.Dial(ctx, "vport0p1")
	if err != nil {
		t.Fatalf("Dial after Close: %v", err)
	}
	c2.Close()
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Read after Close: %v", err)
	}
}

func TestDialWaitsForThePort(t *testing.T) {
	a, m, ctx, _ := fakeAgent(t, "")
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := a.Dial(short, "late"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Dial of a missing port: %v", err)
	}
	dialed := make(chan error, 1)
	go func() {
		c, err := a.Dial(ctx, "late")
		if err == nil {
			c.Close()
		}
		dialed <- err
	}()
	time.Sleep(20 * time.Millisecond)
	if err := m.Plug(2, "late", false); err != nil {
		t.Fatal(err)
	}
	if err := <-dialed; err != nil {
		t.Fatalf("Dial of a hot-plugged port: %v", err)
	}
	// A Dial that waits when the agent closes returns.
	go func() {
		_, err := a.Dial(ctx, "never")
		dialed <- err
	}()
	time.Sleep(20 * time.Millisecond)
	a.Close()
	if err := <-dialed; !errors.Is(err, ErrClosed) {
		t.Fatalf("Dial waiting across Close: %v", err)
	}
	if _, err := a.Dial(ctx, "p"); !errors.Is(err, ErrClosed) {
		t.Fatalf("Dial after Close: %v", err)
	}
}

// TestDialTakesOverASocket: with SocketDir, a port nobody dialed is a
// socket; Dial disconnects its client, the socket refuses clients while
// the conn holds the port, and serves them again after.
func TestDialTakesOverASocket(t *testing.T) {
	dir, err := os.MkdirTemp("", "vs")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	a, m, ctx, _ := fakeAgent(t, dir)
	path := filepath.Join(dir, "p")
	// The ports present at start are served when the agent is up.
	sc, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("no socket for a port present at start: %v", err)
	}
	sc.Write([]byte("sock"))
	if got, err := m.HostReadFull(ctx, 1, 4); err != nil || string(got) != "sock" {
		t.Fatalf("socket client to host: %q, %v", got, err)
	}
	c, err := a.Dial(ctx, "p")
	if err != nil {
		t.Fatalf("Dial of a socket port: %v", err)
	}
	sc.SetReadDeadline(time.Now().Add(testTimeout))
	if _, err := sc.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("socket client after the take-over: %v, want EOF", err)
	}
	sc.Close()
	// The socket side is done with its client (and closed the port for
	// it, which must not reach the host while the conn holds it).
	for clientConnected(ctx, t, dir) {
		if ctx.Err() != nil {
			t.Fatal("the socket side never let its client go")
		}
		time.Sleep(time.Millisecond)
	}
	// Refused while held.
	if sc2, err := net.Dial("unix", path); err == nil {
		sc2.SetReadDeadline(time.Now().Add(testTimeout))
		if _, err := sc2.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("socket client while held: %v, want EOF", err)
		}
		sc2.Close()
	}
	c.Write([]byte("conn"))
	if got, err := m.HostReadFull(ctx, 1, 4); err != nil || string(got) != "conn" {
		t.Fatalf("conn to host: %q, %v", got, err)
	}
	// The host saw the port open from the socket client's session to
	// the conn's Close: the socket side's own close never reached it.
	for _, msg := range m.GuestControl() {
		if msg.ID == 1 && msg.Event == virtiotest.CtrlPortOpen && msg.Value == 0 {
			t.Fatal("the socket client's end closed the port under the conn")
		}
	}
	c.Close()
	// The socket serves again.
	sc3, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer sc3.Close()
	if err := m.HostWrite(1, []byte("back")); err != nil {
		t.Fatal(err)
	}
	sc3.SetReadDeadline(time.Now().Add(testTimeout))
	got := make([]byte, 4)
	if _, err := io.ReadFull(sc3, got); err != nil || string(got) != "back" {
		t.Fatalf("socket client after the conn closed: %q, %v", got, err)
	}
}

// clientConnected reports whether the socket side has a client on port 1,
// as the control socket says.
func clientConnected(ctx context.Context, t *testing.T, dir string) bool {
	st, err := agent.QueryStatus(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range st {
		if p.ID == 1 && p.ClientConnected {
			return true
		}
	}
	return false
}

// Ports and Changed follow the ports: the host leaving and coming back, a
// port plugged, a Dial and its Close, and Close.
func TestPortsAndChanged(t *testing.T) {
	a, m, ctx, _ := fakeAgent(t, "")
	// wait returns Ports once changed fired and ok holds.
	wait := func(what string, ok func([]PortInfo) bool) []PortInfo {
		t.Helper()
		for {
			changed := a.Changed()
			ps := a.Ports()
			if ok(ps) {
				return ps
			}
			select {
			case <-changed:
			case <-ctx.Done():
				t.Fatalf("%s: Ports stayed %+v", what, ps)
			}
		}
	}
	ps := a.Ports()
	if len(ps) != 1 || ps[0] != (PortInfo{Device: 0, ID: 1, Name: "p", HostConnected: true}) {
		t.Fatalf("Ports at start: %+v", ps)
	}
	changed := a.Changed()
	if err := m.HostConnect(1, false); err != nil {
		t.Fatal(err)
	}
	select {
	case <-changed:
	case <-ctx.Done():
		t.Fatal("Changed did not fire when the host left")
	}
	wait("host gone", func(ps []PortInfo) bool { return len(ps) == 1 && !ps[0].HostConnected })
	if err := m.Plug(2, "q", false); err != nil {
		t.Fatal(err)
	}
	wait("port plugged", func(ps []PortInfo) bool { return len(ps) == 2 && ps[1].ID == 2 && ps[1].Name == "q" })
	c, err := a.Dial(ctx, "q")
	if err != nil {
		t.Fatal(err)
	}
	if ps := a.Ports(); !ps[1].Held || ps[0].Held {
		t.Errorf("after Dial q: %+v", ps)
	}
	changed = a.Changed()
	c.Close()
	select {
	case <-changed:
	case <-ctx.Done():
		t.Fatal("Changed did not fire at the conn's Close")
	}
	if ps := a.Ports(); ps[1].Held {
		t.Errorf("after Close: %+v", ps)
	}
	changed = a.Changed()
	a.Close()
	select {
	case <-changed:
	default:
		t.Fatal("Changed still open after Close")
	}
}
