package main

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vserial/vserial/agent"
	"github.com/vserial/vserial/agent/agenttest"
	"github.com/vserial/vserial/internal/devopen"
	"github.com/vserial/vserial/internal/supervisor"
)

const patience = 30 * time.Second

// syncBuffer is a bytes.Buffer the logger and the test can share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// fakeDevice is a device whose ports the test hands in.
type fakeDevice struct {
	ports   chan agent.Port
	present []agent.Port // what Present reports
	once    sync.Once
	mu      sync.Mutex
	err     error
	closed  bool
	sockets []string // socket files present when Close was called
	dir     string
	emerg   []byte // emergency writes
}

func newFakeDevice(dir string) *fakeDevice {
	return &fakeDevice{ports: make(chan agent.Port, 8), dir: dir}
}

func (d *fakeDevice) Ports() <-chan agent.Port { return d.ports }

// fakeFeatures is what every fakeDevice says was negotiated (Describe):
// MULTIPORT, EMERG_WRITE, INDIRECT_DESC, EVENT_IDX, VERSION_1, RING_PACKED.
const fakeFeatures = 1<<1 | 1<<2 | 1<<28 | 1<<29 | 1<<32 | 1<<34

// Describe is a packed device under uio (describer).
func (d *fakeDevice) Describe() agent.DeviceStatus {
	return supervisor.DescribeFeatures("uio", fakeFeatures)
}

func (d *fakeDevice) Present() []agent.Port { return d.present }

// EmergencyWrite records what the agent wrote through the emergency channel.
func (d *fakeDevice) EmergencyWrite(b []byte) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.emerg = append(d.emerg, b...)
	return nil
}

func (d *fakeDevice) emergency() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return string(d.emerg)
}

func (d *fakeDevice) Err() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.err
}

func (d *fakeDevice) fail(err error) {
	d.mu.Lock()
	d.err = err
	d.mu.Unlock()
	d.once.Do(func() { close(d.ports) })
}

func (d *fakeDevice) Close() error {
	d.mu.Lock()
	d.closed = true
	ents, _ := os.ReadDir(d.dir)
	for _, e := range ents {
		if e.Type()&fs.ModeSocket != 0 {
			d.sockets = append(d.sockets, e.Name())
		}
	}
	d.mu.Unlock()
	d.once.Do(func() { close(d.ports) })
	return nil
}

type runHarness struct {
	t      *testing.T
	dir    string
	sys    string
	cancel context.CancelFunc
	done   chan int
	logs   *syncBuffer
	mu     sync.Mutex
	specs  []supervisor.Spec
	devs   []*fakeDevice
}

// startRun runs `vserial-agent run` with a fake opener. openErr, if set,
// makes every open fail.
func startRun(t *testing.T, sys string, extra []string, openErr error) *runHarness {
	t.Helper()
	return startRunPresent(t, sys, extra, openErr, nil)
}

// startRunPresent is startRun with devices that report present[i] as the
// ports device i had at start (Present).
func startRunPresent(t *testing.T, sys string, extra []string, openErr error, present [][]agent.Port) *runHarness {
	t.Helper()
	h := &runHarness{t: t, sys: sys, dir: filepath.Join(shortTempDir(t), "run"), done: make(chan int, 1), logs: &syncBuffer{}}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	open := func(ctx context.Context, spec supervisor.Spec) (supervisor.Device, error) {
		h.mu.Lock()
		defer h.mu.Unlock()
		h.specs = append(h.specs, spec)
		if openErr != nil {
			return nil, openErr
		}
		d := newFakeDevice(h.dir)
		if i := len(h.devs); i < len(present) {
			d.present = present[i]
		}
		h.devs = append(h.devs, d)
		return d, nil
	}
	args := append([]string{"run", "--socket-dir", h.dir, "--sysfs", sys, "--log-level", "debug"}, extra...)
	go func() { h.done <- realMain(ctx, args, h.logs, h.logs, open) }()
	t.Cleanup(func() {
		cancel()
		if t.Failed() {
			t.Logf("agent log:\n%s", h.logs.String())
		}
	})
	return h
}

func (h *runHarness) wait() int {
	h.t.Helper()
	select {
	case code := <-h.done:
		return code
	case <-time.After(patience):
		h.t.Fatalf("run did not return; log:\n%s", h.logs.String())
		return -1
	}
}

func (h *runHarness) device(i int) *fakeDevice {
	h.t.Helper()
	deadline := time.Now().Add(patience)
	for time.Now().Before(deadline) {
		h.mu.Lock()
		if len(h.devs) > i {
			d := h.devs[i]
			h.mu.Unlock()
			return d
		}
		h.mu.Unlock()
		time.Sleep(2 * time.Millisecond)
	}
	h.t.Fatalf("device %d never opened; log:\n%s", i, h.logs.String())
	return nil
}

func waitFile(t *testing.T, path string) {
	t.Helper()
	deadline := time.Now().Add(patience)
	for {
		if _, err := os.Lstat(path); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never appeared", path)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestRunServesAndShutsDownCleanly(t *testing.T) {
	sys := shortTempDir(t)
	fakeFunction(t, sys, "0000:00:03.0", "0x1af4", "0x1043", "0x1100", "")
	fakeFunction(t, sys, "0000:00:05.0", "0x1af4", "0x1003", "0x0003", "virtio-pci") // held: skipped
	fakeFunction(t, sys, "0000:00:06.0", "0x8086", "0x10d3", "0x0000", "")           // not a console
	h := startRun(t, sys, []string{"--max-ports", "4"}, nil)
	d := h.device(0)
	p := agenttest.NewPort(1, "org.example.port")
	p.SetHostConnected(true)
	d.ports <- p
	sock := filepath.Join(h.dir, "org.example.port")
	waitFile(t, sock)

	h.mu.Lock()
	specs := append([]supervisor.Spec(nil), h.specs...)
	h.mu.Unlock()
	if len(specs) != 1 || specs[0].Function.Addr != "0000:00:03.0" || specs[0].Index != 0 || specs[0].Explicit || specs[0].Bind != bindAuto || specs[0].MaxPorts != 4 {
		t.Fatalf("opened %+v; want only the free console 0000:00:03.0, not explicit, auto, 4 ports", specs)
	}

	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	st, err := agent.QueryStatus(ctx, h.dir)
	if err != nil || len(st) != 1 || st[0].Socket != sock {
		t.Fatalf("control socket: %+v, %v", st, err)
	}
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := p.Wait(ctx, func(s agenttest.State) bool { return s.GuestOpen }); err != nil {
		t.Fatal(err)
	}

	h.cancel() // SIGTERM
	if code := h.wait(); code != exitOK {
		t.Fatalf("exit %d after the signal, want 0", code)
	}
	if got := p.State().Opens; len(got) != 2 || got[1] {
		t.Errorf("opens = %v, want [true false]: the host must see the port closed", got)
	}
	c.SetReadDeadline(time.Now().Add(patience))
	if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Errorf("client still connected after shutdown")
	}
	d.mu.Lock()
	closed, left := d.closed, d.sockets
	d.mu.Unlock()
	if !closed {
		t.Error("device not closed at shutdown")
	}
	if len(left) != 0 {
		t.Errorf("device closed while the agent still had sockets %v: the agent must close first", left)
	}
	if got := d.emergency(); got != "vserial-agent: starting on 0000:00:03.0\n" {
		t.Errorf("emergency writes %q, want only the start line", got)
	}
	ents, _ := os.ReadDir(h.dir)
	if len(ents) != 0 {
		t.Errorf("socket dir not empty after shutdown: %v", ents)
	}
}

func TestRunExplicitDevice(t *testing.T) {
	sys := shortTempDir(t)
	fakeFunction(t, sys, "0000:00:05.0", "0x1af4", "0x1003", "0x0003", "virtio-pci")
	h := startRun(t, sys, []string{"--device", "00:05.0"}, nil)
	h.device(0)
	h.cancel()
	if code := h.wait(); code != exitOK {
		t.Fatalf("exit %d", code)
	}
	if len(h.specs) != 1 || h.specs[0].Function.Addr != "0000:00:05.0" || !h.specs[0].Explicit {
		t.Errorf("specs %+v: want the named function, explicit", h.specs)
	}
}

func TestRunFailures(t *testing.T) {
	for _, c := range []struct {
		name    string
		funcs   [][4]string // addr, device, subdevice, driver
		extra   []string
		openErr error
		log     string
	}{
		{"no console", nil, nil, nil, "no virtio-console function"},
		{"all held", [][4]string{{"0000:00:03.0", "0x1043", "0x1100", "virtio-pci"}}, nil, nil, "held by a driver"},
		{"not a console", [][4]string{{"0000:00:03.0", "0x1000", "0x0001", ""}}, []string{"--device", "0000:00:03.0"}, nil, "is not a virtio-console function"},
		{"missing device", nil, []string{"--device", "0000:00:09.0"}, nil, "no such PCI function"},
		{"open fails", [][4]string{{"0000:00:03.0", "0x1043", "0x1100", ""}}, nil, errors.New("device on fire"), "device on fire"},
	} {
		t.Run(c.name, func(t *testing.T) {
			sys := shortTempDir(t)
			os.MkdirAll(filepath.Join(sys, "bus", "pci", "devices"), 0o755)
			for _, f := range c.funcs {
				fakeFunction(t, sys, f[0], "0x1af4", f[1], f[2], f[3])
			}
			h := startRun(t, sys, c.extra, c.openErr)
			if code := h.wait(); code != exitFailure {
				t.Fatalf("exit %d, want %d", code, exitFailure)
			}
			if !strings.Contains(h.logs.String(), c.log) {
				t.Errorf("log does not say %q:\n%s", c.log, h.logs.String())
			}
			ents, _ := os.ReadDir(h.dir)
			if len(ents) != 0 {
				t.Errorf("sockets left behind: %v", ents)
			}
		})
	}
}

func TestRunEveryDeviceStopped(t *testing.T) {
	sys := shortTempDir(t)
	fakeFunction(t, sys, "0000:00:03.0", "0x1af4", "0x1043", "0x1100", "")
	h := startRun(t, sys, nil, nil)
	h.device(0).fail(errors.New("device reset failed"))
	if code := h.wait(); code != exitFailure {
		t.Fatalf("exit %d, want %d", code, exitFailure)
	}
	if !strings.Contains(h.logs.String(), "device reset failed") {
		t.Errorf("log does not say why the device stopped:\n%s", h.logs.String())
	}
	// The host hears it too, through the emergency channel.
	want := "vserial-agent: starting on 0000:00:03.0\n" +
		"vserial-agent: fatal: device 0000:00:03.0 stopped: device reset failed\n" +
		"vserial-agent: fatal: every device stopped; exiting\n"
	if got := h.device(0).emergency(); got != want {
		t.Errorf("emergency writes %q, want %q", got, want)
	}
}

// A device that fails to open after another opened: the opened one tells
// the host why the agent gives up; a line never spans more than one line.
func TestRunEmergencyOnOpenFailure(t *testing.T) {
	sys := shortTempDir(t)
	fakeFunction(t, sys, "0000:00:03.0", "0x1af4", "0x1043", "0x1100", "")
	fakeFunction(t, sys, "0000:00:04.0", "0x1af4", "0x1043", "0x1100", "")
	h := &runHarness{t: t, sys: sys, dir: filepath.Join(shortTempDir(t), "run"), done: make(chan int, 1), logs: &syncBuffer{}}
	first := newFakeDevice(h.dir)
	n := 0
	open := func(ctx context.Context, spec supervisor.Spec) (supervisor.Device, error) {
		n++
		if n == 1 {
			return first, nil
		}
		return nil, errors.New("bring up:\nno memory")
	}
	code := realMain(context.Background(), []string{"run", "--socket-dir", h.dir, "--sysfs", sys}, h.logs, h.logs, open)
	if code != exitFailure {
		t.Fatalf("exit %d, want %d", code, exitFailure)
	}
	want := "vserial-agent: starting on 0000:00:03.0\n" +
		"vserial-agent: fatal: cannot open device 0000:00:04.0: bring up: no memory\n"
	if got := first.emergency(); got != want {
		t.Errorf("emergency writes %q, want %q", got, want)
	}
}

func TestRunTakesFunctionLeftOnUIOByEarlierRun(t *testing.T) {
	sys := shortTempDir(t)
	fakeFunction(t, sys, "0000:00:03.0", "0x1af4", "0x1043", "0x1100", "uio_pci_generic")
	fakeFunction(t, sys, "0000:00:04.0", "0x1af4", "0x1043", "0x1100", "virtio-pci")
	var logs strings.Builder
	fns, err := devopen.Select(sys, nil, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if len(fns) != 1 || fns[0].Addr != "0000:00:03.0" {
		t.Fatalf("selected %v, want only 0000:00:03.0 (the one on uio_pci_generic)", fns)
	}
}
