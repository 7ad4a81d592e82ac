package vserial

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vserial/vserial/agent"
	"github.com/vserial/vserial/driver"
	"github.com/vserial/vserial/internal/hotplug"
	"github.com/vserial/vserial/internal/supervisor"
	"github.com/vserial/vserial/pciscan/pciscantest"
	"github.com/vserial/vserial/pump"
)

// Each zero value is run's default; the rest is passed on or refused.
func TestOptionsConfig(t *testing.T) {
	cfg, err := Options{}.config()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MaxPorts != DefaultMaxPorts || cfg.Program != "vserial" || cfg.Sockets != nil || cfg.Poll.Mode != pump.PollAdaptive ||
		cfg.Ring != driver.RingAuto || cfg.ShutdownFlush != 0 || cfg.DMABudget != 0 || cfg.Logger == nil || cfg.WaitDevices {
		t.Errorf("zero Options: %+v", cfg)
	}
	cfg, err = Options{
		MaxPorts: -1, SocketDir: "/run/x", SocketMode: 0o600, DirMode: 0o700, Ring: "packed", Poll: "off",
		ShutdownFlush: -1, DMABudget: 8 << 20, WaitDevices: true, Program: "agent",
		Ports: map[string]agent.PortConfig{"p": {Socket: "q"}}, Console: agent.ConsoleConfig{PTY: true},
	}.config()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MaxPorts != 0 || cfg.Ring != driver.RingPacked || cfg.Poll.Mode != pump.PollOff || cfg.ShutdownFlush != -1 ||
		cfg.DMABudget != 8<<20 || !cfg.WaitDevices || cfg.Program != "agent" {
		t.Errorf("config %+v", cfg)
	}
	if s := cfg.Sockets; s == nil || s.SocketDir != "/run/x" || s.SocketMode != 0o600 || s.DirMode != 0o700 || s.Ports["p"].Socket != "q" || !s.Console.PTY {
		t.Errorf("sockets %+v", cfg.Sockets)
	}
	for _, bad := range []Options{{Bind: "kernel"}, {Ring: "ring"}, {Poll: "sometimes"}, {MaxPorts: driver.MaxPorts + 1}, {DMABudget: -1}} {
		if _, err := bad.config(); err == nil || !strings.HasPrefix(err.Error(), "vserial: ") {
			t.Errorf("%+v: %v, want a vserial: error", bad, err)
		}
	}
}

// stopDevice is a device with no port that the test stops.
type stopDevice struct {
	ports chan agent.Port
	mu    sync.Mutex
	err   error
	emerg strings.Builder
	once  sync.Once
}

func newStopDevice() *stopDevice { return &stopDevice{ports: make(chan agent.Port)} }

func (d *stopDevice) Ports() <-chan agent.Port { return d.ports }
func (d *stopDevice) Present() []agent.Port    { return nil }
func (d *stopDevice) Close() error             { d.stop(nil); return nil }

func (d *stopDevice) Err() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.err
}

func (d *stopDevice) EmergencyWrite(b []byte) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.emerg.Write(b)
	return nil
}

func (d *stopDevice) emergency() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.emerg.String()
}

func (d *stopDevice) stop(err error) {
	d.once.Do(func() {
		d.mu.Lock()
		d.err = err
		d.mu.Unlock()
		close(d.ports)
	})
}

// openStopDevice opens an Agent over one stopDevice (through the opener
// hook, on a fake sysfs), with opts.
func openStopDevice(t *testing.T, opts Options) (*Agent, *stopDevice) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	opts.Sysfs = t.TempDir()
	pciscantest.Function(t, opts.Sysfs, "0000:00:03.0", "0x1af4", "0x1043", "0x1100", "")
	d := newStopDevice()
	h := supervisor.Hooks{
		Open:    func(context.Context, supervisor.Spec) (supervisor.Device, error) { return d, nil },
		Uevents: func() (hotplug.Uevents, error) { return nil, errors.New("no uevents in this test") },
	}
	opts.Logger = testLogger(t)
	a, err := Open(supervisor.WithHooks(ctx, h), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a, d
}

// Done closes once every device stopped, after the host was told, and
// Err says why; with WaitDevices it never does.
func TestDoneWhenEveryDeviceStopped(t *testing.T) {
	a, d := openStopDevice(t, Options{})
	select {
	case <-a.Done():
		t.Fatal("Done closed while the device runs")
	default:
	}
	if a.Err() != nil {
		t.Fatalf("Err %v while the device runs", a.Err())
	}
	d.stop(errors.New("interrupt gone"))
	select {
	case <-a.Done():
	case <-time.After(testTimeout):
		t.Fatal("Done never closed after the only device stopped")
	}
	if !errors.Is(a.Err(), ErrEveryDeviceStopped) {
		t.Errorf("Err %v, want ErrEveryDeviceStopped", a.Err())
	}
	want := "vserial: starting on 0000:00:03.0\n" +
		"vserial: fatal: device 0000:00:03.0 stopped: interrupt gone\n" +
		"vserial: fatal: every device stopped; exiting\n"
	if got := d.emergency(); got != want {
		t.Errorf("emergency lines %q, want %q", got, want)
	}
	if err := a.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}

	a, d = openStopDevice(t, Options{WaitDevices: true, Program: "prog"})
	d.stop(errors.New("interrupt gone"))
	select {
	case <-a.Done():
		t.Fatal("Done closed with WaitDevices")
	case <-time.After(100 * time.Millisecond):
	}
	if got := d.emergency(); !strings.HasPrefix(got, "prog: starting on") || !strings.Contains(got, "prog: fatal: device 0000:00:03.0 stopped") {
		t.Errorf("emergency lines %q", got)
	}
}
