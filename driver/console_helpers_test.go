package driver

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vserial/vserial/driver/virtiotest"
)

// testTimeout bounds every wait so a broken driver fails instead of hanging;
// it is not a performance assertion.
const testTimeout = 20 * time.Second

// logBuf collects log lines for assertions.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuf) Contains(s string) bool { return strings.Contains(l.String(), s) }

// rig is a driver brought up against the QEMU-like console model.
type rig struct {
	t   *testing.T
	m   *virtiotest.Console
	f   *virtiotest.Function
	fn  Function
	d   *Device
	log *logBuf
	ctx context.Context
}

type rigOpts struct {
	console virtiotest.ConsoleConfig
	fn      virtiotest.Options
	cfg     Config
	plug    func(m *virtiotest.Console) // before Open (cold plug)
	bad     *virtiotest.ConsoleMisbehaviour
	noOpen  bool
	// packed: the function offers VIRTIO_F_RING_PACKED and the rig checks
	// that the driver took it.
	packed bool
}

// bothRings runs fn with the split ring and with the packed ring (the
// function offering VIRTIO_F_RING_PACKED, which the driver takes).
func bothRings(t *testing.T, fn func(t *testing.T, packed bool)) {
	t.Helper()
	for _, packed := range []bool{false, true} {
		name := "split"
		if packed {
			name = "packed"
		}
		t.Run(name, func(t *testing.T) { fn(t, packed) })
	}
}

func newRig(t *testing.T, o rigOpts) *rig {
	t.Helper()
	m := virtiotest.NewConsole(o.console)
	if o.plug != nil {
		o.plug(m)
	}
	if o.bad != nil {
		m.SetMisbehaviour(*o.bad)
	}
	if o.packed {
		o.fn.Packed = true
	}
	f, fn := newFake(t, m, o.fn)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	r := &rig{t: t, m: m, f: f, fn: fn, log: &logBuf{}, ctx: ctx}
	if o.cfg.Logger == nil {
		o.cfg.Logger = r.logger()
	}
	if o.noOpen {
		return r
	}
	d, err := Open(ctx, fn, o.cfg)
	if err != nil {
		t.Fatalf("Open: %v\nlog:\n%s", err, r.log)
	}
	r.d = d
	if got := d.Features()&FeatureRingPacked != 0; got != o.packed {
		t.Fatalf("packed ring negotiated: %v, want %v (features %#x)", got, o.packed, d.Features())
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		// Every allocation is returned once the device is closed.
		if n, b := f.Heap().Live(); n != 0 {
			t.Errorf("after Close %d allocations (%d bytes) still live", n, b)
		}
	})
	return r
}

// until waits for cond on the driver side, polling on port and device
// changes; it fails the test at the timeout.
func (r *rig) until(what string, cond func() bool) {
	r.t.Helper()
	for !cond() {
		select {
		case <-r.ctx.Done():
			r.t.Fatalf("timed out waiting for %s\nlog:\n%s", what, r.log)
		case <-time.After(time.Millisecond):
		}
	}
}

// port waits for the port with id (and name, if given) to exist.
func (r *rig) port(id uint32, name string) *Port {
	r.t.Helper()
	var p *Port
	r.until(fmt.Sprintf("port %d %q", id, name), func() bool {
		p = r.d.Port(id)
		return p != nil && (name == "" || p.Name() == name)
	})
	return p
}

// modelWait waits for cond on the model side.
func (r *rig) modelWait(what string, cond func() bool) {
	r.t.Helper()
	if err := r.m.WaitFor(r.ctx, cond); err != nil {
		r.t.Fatalf("waiting for %s: %v\nlog:\n%s", what, err, r.log)
	}
}

// recvN reads exactly n bytes host→guest through Recv.
func (r *rig) recvN(p *Port, n int) []byte {
	r.t.Helper()
	var got bytes.Buffer
	for got.Len() < n {
		if _, err := p.Recv(r.ctx, &got); err != nil {
			r.t.Fatalf("Recv after %d of %d bytes: %v", got.Len(), n, err)
		}
	}
	return got.Bytes()
}

// guestControl returns the control messages the driver sent with event ev
// for port id.
func (r *rig) guestControl(id uint32, ev uint16) []virtiotest.ControlMsg {
	var out []virtiotest.ControlMsg
	for _, m := range r.m.GuestControl() {
		if m.ID == id && m.Event == ev {
			out = append(out, m)
		}
	}
	return out
}

func plugPorts(ports ...portSpec) func(*virtiotest.Console) {
	return func(m *virtiotest.Console) {
		for _, p := range ports {
			if err := m.Plug(p.id, p.name, p.console); err != nil {
				panic(err)
			}
			if p.host && !p.console {
				if err := m.HostConnect(p.id, true); err != nil {
					panic(err)
				}
			}
		}
	}
}

type portSpec struct {
	id      uint32
	name    string
	console bool
	host    bool
}

// logger returns a logger writing into the rig's log buffer.
func (r *rig) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(r.log, &slog.HandlerOptions{Level: slog.LevelDebug}))
}
