package driver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vserial/vserial/driver/virtiotest"
	"github.com/vserial/vserial/ring"
	"github.com/vserial/vserial/ring/ringtest"
)

// settled reports whether p is live and not waiting for re-announcement.
func (p *Port) settled() bool {
	p.d.mu.Lock()
	defer p.d.mu.Unlock()
	return !p.removed && !p.reannounce
}

func TestControlReceiveqStockedSoNoMessageDropped(t *testing.T) {
	// 31 ports, each announced with PORT_ADD and answered with
	// CONSOLE_PORT/PORT_NAME/PORT_OPEN: far more messages than the 32
	// control buffers, all in one synchronous burst from the device.
	var specs []portSpec
	for id := uint32(0); id < 31; id++ {
		specs = append(specs, portSpec{id: id, name: fmt.Sprintf("port-%d", id), console: id == 0, host: true})
	}
	r := newRig(t, rigOpts{plug: plugPorts(specs...)})
	for _, s := range specs {
		p := r.port(s.id, s.name)
		r.until("host connected", p.HostConnected)
	}
	// Hot-plug (one QMP command after the other) keeps working too.
	for id := uint32(1); id < 31; id++ {
		if err := r.m.Unplug(id); err != nil {
			t.Fatal(err)
		}
		if err := r.m.Plug(id, fmt.Sprintf("again-%d", id), false); err != nil {
			t.Fatal(err)
		}
		r.port(id, fmt.Sprintf("again-%d", id))
	}
	if st := r.m.Stats(); st.ControlDropped != 0 {
		t.Errorf("device dropped %d control messages for lack of a buffer", st.ControlDropped)
	}
}

func TestPortNameWithAndWithoutTrailingNULEndToEnd(t *testing.T) {
	for _, noNUL := range []bool{false, true} {
		t.Run(fmt.Sprintf("spec-form=%v", noNUL), func(t *testing.T) {
			r := newRig(t, rigOpts{
				plug: plugPorts(portSpec{id: 1, name: "org.qemu.guest_agent.0"}),
				bad:  &virtiotest.ConsoleMisbehaviour{NameWithoutNUL: noNUL},
			})
			p := r.port(1, "org.qemu.guest_agent.0")
			if got := p.Name(); got != "org.qemu.guest_agent.0" {
				t.Errorf("name %q", got)
			}
			if v := r.d.Stats().Violations; v != 0 {
				t.Errorf("%d violations", v)
			}
		})
	}
}

func TestPortAddReplayedOnDeviceReady(t *testing.T) {
	// Cold-plugged ports: their PORT_ADDs were "sent" before any driver
	// ran; QEMU replays them on DEVICE_READY, in plug order.
	r := newRig(t, rigOpts{plug: plugPorts(
		portSpec{id: 5, name: "five"}, portSpec{id: 2, name: "two"}, portSpec{id: 0, name: "con", console: true},
	)})
	for _, id := range []uint32{5, 2, 0} {
		r.port(id, "")
		if !r.m.PortReady(id) {
			t.Errorf("port %d not acknowledged with PORT_READY(1)", id)
		}
	}
	var ready []uint32
	for _, m := range r.m.GuestControl() {
		if m.Event == virtiotest.CtrlPortReady {
			if m.Value != 1 {
				t.Errorf("PORT_READY(%d) for port %d", m.Value, m.ID)
			}
			ready = append(ready, m.ID)
		}
	}
	if fmt.Sprint(ready) != "[5 2 0]" {
		t.Errorf("PORT_READY order %v, want plug order [5 2 0]", ready)
	}
	first := r.m.GuestControl()[0]
	if first.Event != virtiotest.CtrlDeviceReady || first.ID != badPortID || first.Value != 1 {
		t.Errorf("first control message %+v, want DEVICE_READY(0xffffffff, 1)", first)
	}
}

func TestGuestToHostBackpressureWhileHostDisconnected(t *testing.T) {
	r := newRig(t, rigOpts{plug: plugPorts(portSpec{id: 1, name: "p"})})
	p := r.port(1, "p")
	if p.HostConnected() {
		t.Fatal("host connected before any host peer")
	}
	readCalled := make(chan struct{}, 1)
	data := bytes.Repeat([]byte{0xa5}, 3000)
	src := readerFunc(func(b []byte) (int, error) {
		readCalled <- struct{}{}
		return copy(b, data), nil
	})
	sent := make(chan error, 1)
	go func() {
		_, err := p.Send(r.ctx, src)
		sent <- err
	}()
	select {
	case <-readCalled:
		t.Fatal("Send read bytes while the host was disconnected: QEMU would discard them")
	case <-time.After(50 * time.Millisecond):
	}
	if err := r.m.HostConnect(1, true); err != nil {
		t.Fatal(err)
	}
	if err := <-sent; err != nil {
		t.Fatalf("Send: %v", err)
	}
	if err := p.Flush(r.ctx); err != nil {
		t.Fatal(err)
	}
	got, err := r.m.HostReadFull(r.ctx, 1, len(data))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("host got %d bytes, %v", len(got), err)
	}
	if d := r.m.Stats().TxDiscarded; d != 0 {
		t.Errorf("device discarded %d guest bytes", d)
	}
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(b []byte) (int, error) { return f(b) }

func TestGuestToHostBackpressureWhenHostStopsReading(t *testing.T) {
	bothRings(t, func(t *testing.T, packed bool) {
		r := newRig(t, rigOpts{packed: packed, cfg: Config{TxBuffers: 4}, plug: plugPorts(portSpec{id: 1, name: "p", host: true})})
		p := r.port(1, "p")
		r.until("host connected", p.HostConnected)
		if err := r.m.SetThrottled(1, true); err != nil {
			t.Fatal(err)
		}
		// Four buffers go in flight, the fifth Send has to wait.
		for i := 0; i < 4; i++ {
			if _, err := p.Send(r.ctx, bytes.NewReader([]byte{byte(i)})); err != nil {
				t.Fatal(err)
			}
		}
		ctx, cancel := context.WithTimeout(r.ctx, 50*time.Millisecond)
		_, err := p.Send(ctx, bytes.NewReader([]byte{4}))
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("fifth Send with every buffer in flight: %v, want it to wait", err)
		}
		if err := r.m.SetThrottled(1, false); err != nil {
			t.Fatal(err)
		}
		if _, err := p.Send(r.ctx, bytes.NewReader([]byte{4})); err != nil {
			t.Fatal(err)
		}
		if err := p.Flush(r.ctx); err != nil {
			t.Fatal(err)
		}
		got, err := r.m.HostReadFull(r.ctx, 1, 5)
		if err != nil || !bytes.Equal(got, []byte{0, 1, 2, 3, 4}) {
			t.Fatalf("host got %v, %v", got, err)
		}
	})
}

func TestHostToGuestHeldWhileGuestPortClosed(t *testing.T) {
	r := newRig(t, rigOpts{plug: plugPorts(portSpec{id: 1, name: "p", host: true})})
	p := r.port(1, "p")
	if err := r.m.HostWrite(1, []byte("early")); err != nil {
		t.Fatal(err)
	}
	if n := r.m.HostPending(1); n != 5 {
		t.Fatalf("device delivered to a closed guest port (%d bytes still held, want 5)", n)
	}
	if err := p.SetGuestOpen(r.ctx, true); err != nil {
		t.Fatal(err)
	}
	if got := r.recvN(p, 5); string(got) != "early" {
		t.Fatalf("got %q", got)
	}
}

func TestGuestCloseDiscardsUnreadAndCounts(t *testing.T) {
	r := newRig(t, rigOpts{plug: plugPorts(portSpec{id: 1, name: "p", host: true})})
	p := r.port(1, "p")
	if err := p.SetGuestOpen(r.ctx, true); err != nil {
		t.Fatal(err)
	}
	if err := r.m.HostWrite(1, []byte("unread")); err != nil {
		t.Fatal(err)
	}
	r.until("data arrived", func() bool { p.d.mu.Lock(); defer p.d.mu.Unlock(); return p.s.fLen > 0 })
	if err := p.SetGuestOpen(r.ctx, false); err != nil {
		t.Fatal(err)
	}
	if st := p.Stats(); st.Discarded != 6 {
		t.Errorf("Discarded = %d, want 6", st.Discarded)
	}
	if msgs := r.guestControl(1, virtiotest.CtrlPortOpen); len(msgs) != 2 || msgs[1].Value != 0 {
		t.Errorf("PORT_OPEN messages %+v, want open then close", msgs)
	}
	r.modelWait("guest closed", func() bool { return !r.m.GuestConnected(1) })
}

func TestRecvShortWriterDiscardsRestAndCounts(t *testing.T) {
	r := newRig(t, rigOpts{plug: plugPorts(portSpec{id: 1, name: "p", host: true})})
	p := r.port(1, "p")
	if err := p.SetGuestOpen(r.ctx, true); err != nil {
		t.Fatal(err)
	}
	if err := r.m.HostWrite(1, []byte("0123456789")); err != nil {
		t.Fatal(err)
	}
	n, err := p.Recv(r.ctx, writerFunc(func(b []byte) (int, error) { return 4, io.ErrShortWrite }))
	if n != 4 || !errors.Is(err, io.ErrShortWrite) {
		t.Fatalf("Recv = %d, %v", n, err)
	}
	if st := p.Stats(); st.BytesIn != 4 || st.Discarded != 6 {
		t.Errorf("stats %+v, want 4 in, 6 discarded", st)
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

func TestReadKeepsBytesThatDoNotFit(t *testing.T) {
	r := newRig(t, rigOpts{plug: plugPorts(portSpec{id: 1, name: "p", host: true})})
	p := r.port(1, "p")
	if err := p.SetGuestOpen(r.ctx, true); err != nil {
		t.Fatal(err)
	}
	if err := r.m.HostWrite(1, []byte("abcdefgh")); err != nil {
		t.Fatal(err)
	}
	var got []byte
	for len(got) < 8 {
		b := make([]byte, 3)
		n, err := p.Read(r.ctx, b)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, b[:n]...)
	}
	if string(got) != "abcdefgh" {
		t.Fatalf("got %q", got)
	}
}

func TestPortRemoveWakesReadersAndWriters(t *testing.T) {
	bothRings(t, func(t *testing.T, packed bool) {
		r := newRig(t, rigOpts{packed: packed, cfg: Config{TxBuffers: 1}, plug: plugPorts(portSpec{id: 1, name: "p", host: true})})
		p := r.port(1, "p")
		r.until("host connected", p.HostConnected)
		if err := p.SetGuestOpen(r.ctx, true); err != nil {
			t.Fatal(err)
		}
		if err := r.m.SetThrottled(1, true); err != nil {
			t.Fatal(err)
		}
		if _, err := p.Send(r.ctx, strings.NewReader("x")); err != nil { // the only tx buffer
			t.Fatal(err)
		}
		changed := p.Changed()
		recvErr := make(chan error, 1)
		txErrs := make(chan error, 2)
		go func() { _, err := p.Recv(r.ctx, io.Discard); recvErr <- err }()
		go func() { _, err := p.Send(r.ctx, strings.NewReader("y")); txErrs <- err }()
		go func() { txErrs <- p.Flush(r.ctx) }()
		time.Sleep(20 * time.Millisecond) // let them block (the test passes either way)
		if err := r.m.Unplug(1); err != nil {
			t.Fatal(err)
		}
		if err := <-recvErr; !errors.Is(err, ErrPortRemoved) {
			t.Errorf("reader: %v, want ErrPortRemoved", err)
		}
		// QEMU returns the port's pending transmit buffers (used, len 0) before
		// it sends PORT_REMOVE. A writer that reaps them first sees its bytes
		// taken (nil), as a Linux writer would; otherwise it sees the removal.
		// Either way it must wake up, and nothing else is acceptable.
		for i := 0; i < 2; i++ {
			if err := <-txErrs; err != nil && !errors.Is(err, ErrPortRemoved) {
				t.Errorf("writer %d: %v, want nil or ErrPortRemoved", i, err)
			}
		}
		r.until("removed", p.Removed)
		if _, err := p.Send(r.ctx, strings.NewReader("z")); !errors.Is(err, ErrPortRemoved) {
			t.Errorf("Send after removal: %v, want ErrPortRemoved", err)
		}
		select {
		case <-changed:
		default:
			t.Error("Changed not fired by removal")
		}
		if !p.Removed() || r.d.Port(1) != nil {
			t.Error("port still reported live")
		}
		if err := p.SetGuestOpen(r.ctx, false); !errors.Is(err, ErrPortRemoved) {
			t.Errorf("SetGuestOpen after removal: %v", err)
		}
		if _, err := p.Write(r.ctx, []byte("z")); !errors.Is(err, ErrPortRemoved) {
			t.Errorf("Write after removal: %v", err)
		}
		if v := r.d.Stats().Violations; v != 0 {
			t.Errorf("%d violations", v)
		}
	})
}

func TestReplugReusesPostedReceiveBuffers(t *testing.T) {
	bothRings(t, func(t *testing.T, packed bool) {
		r := newRig(t, rigOpts{packed: packed, plug: plugPorts(portSpec{id: 1, name: "p", host: true})})
		p := r.port(1, "p")
		n0, _ := r.f.Heap().Live()
		if err := r.m.Unplug(1); err != nil {
			t.Fatal(err)
		}
		r.until("removed", p.Removed)
		if err := r.m.Plug(1, "p2", false); err != nil {
			t.Fatal(err)
		}
		if err := r.m.HostConnect(1, true); err != nil {
			t.Fatal(err)
		}
		p2 := r.port(1, "p2")
		if p2 == p {
			t.Fatal("re-plugged port reuses the removed Port object")
		}
		if n1, _ := r.f.Heap().Live(); n1 != n0 {
			t.Errorf("live allocations %d → %d across unplug/replug: receive buffers not reused", n0, n1)
		}
		if err := p2.SetGuestOpen(r.ctx, true); err != nil {
			t.Fatal(err)
		}
		if err := r.m.HostWrite(1, []byte("again")); err != nil {
			t.Fatal(err)
		}
		if got := r.recvN(p2, 5); string(got) != "again" {
			t.Fatalf("got %q", got)
		}
	})
}

func TestDuplicatePortAddReAcked(t *testing.T) {
	r := newRig(t, rigOpts{
		plug: plugPorts(portSpec{id: 1, name: "p"}),
		bad:  &virtiotest.ConsoleMisbehaviour{DuplicatePortAdd: true},
	})
	p := r.port(1, "p")
	if got := r.guestControl(1, virtiotest.CtrlPortReady); len(got) != 2 || got[0].Value != 1 || got[1].Value != 1 {
		t.Errorf("PORT_READY for a duplicated PORT_ADD: %+v, want two PORT_READY(1)", got)
	}
	if st := r.d.Stats(); st.Violations != 1 || st.Resets != 0 {
		t.Errorf("stats %+v, want 1 violation and no reset", st)
	}
	if len(r.d.Ports()) != 1 || p.Removed() {
		t.Error("duplicate PORT_ADD changed the port set")
	}
}

func TestNonMultiportSingleConsolePort(t *testing.T) {
	r := newRig(t, rigOpts{
		console: virtiotest.ConsoleConfig{MaxPorts: 1},
		plug:    plugPorts(portSpec{id: 0, console: true}),
	})
	if r.d.Multiport() {
		t.Fatal("MULTIPORT negotiated with max_ports 1")
	}
	ps := r.d.Ports()
	if len(ps) != 1 || ps[0].ID() != 0 || !ps[0].IsConsole() || !ps[0].HostConnected() {
		t.Fatalf("ports %v", ps)
	}
	p := ps[0]
	if err := r.m.HostWrite(0, []byte("login: ")); err != nil {
		t.Fatal(err)
	}
	if got := r.recvN(p, 7); string(got) != "login: " {
		t.Fatalf("got %q", got)
	}
	if _, err := p.Write(r.ctx, []byte("root\n")); err != nil {
		t.Fatal(err)
	}
	if got, err := r.m.HostReadFull(r.ctx, 0, 5); err != nil || string(got) != "root\n" {
		t.Fatalf("host got %q, %v", got, err)
	}
	if n := len(r.m.GuestControl()); n != 0 {
		t.Errorf("%d control messages without MULTIPORT", n)
	}
	if got := p.KernelName(); got != "vport0p0" {
		t.Errorf("KernelName %q", got)
	}
}

func TestMaxNrPortsZeroRejected(t *testing.T) {
	r := newRig(t, rigOpts{noOpen: true, bad: &virtiotest.ConsoleMisbehaviour{OverrideMaxNrPorts: true, MaxNrPorts: 0}})
	d, err := Open(r.ctx, r.fn, Config{Logger: nil})
	if err == nil {
		d.Close()
		t.Fatal("Open accepted max_nr_ports 0 with MULTIPORT")
	}
	if !errors.Is(err, ErrDeviceProtocolConsole) {
		t.Errorf("err = %v", err)
	}
	if st := r.f.Status(); st&StatusFailed == 0 {
		t.Errorf("status %#x: FAILED not set", st)
	}
	if n, _ := r.f.Heap().Live(); n != 0 {
		t.Errorf("%d allocations left after the failed Open", n)
	}
}

func TestMaxNrPortsHugeIsCapped(t *testing.T) {
	r := newRig(t, rigOpts{
		plug: plugPorts(portSpec{id: 1, name: "p"}),
		bad:  &virtiotest.ConsoleMisbehaviour{OverrideMaxNrPorts: true, MaxNrPorts: 0xffffffff},
	})
	if got := r.d.MaxPorts(); got != MaxPorts-1 {
		t.Errorf("MaxPorts %d, want %d", got, MaxPorts-1)
	}
	r.port(1, "p")
	if !r.log.Contains("max_nr_ports capped") {
		t.Error("no log line for the capped max_nr_ports")
	}
}

func TestConfigMaxPortsCapIgnoresHigherPorts(t *testing.T) {
	r := newRig(t, rigOpts{
		cfg:  Config{MaxPorts: 3},
		plug: plugPorts(portSpec{id: 1, name: "in"}, portSpec{id: 5, name: "beyond"}),
	})
	r.port(1, "in")
	if r.d.Port(5) != nil {
		t.Error("port 5 exists beyond the cap of 3")
	}
	if got := r.guestControl(5, virtiotest.CtrlPortReady); len(got) != 0 {
		t.Errorf("PORT_READY sent for a port beyond the cap: %+v", got)
	}
	st := r.d.Stats()
	if st.IgnoredPorts != 1 || st.Violations != 0 {
		t.Errorf("stats %+v, want 1 ignored port, no violation", st)
	}
	if !r.log.Contains("beyond the configured cap") {
		t.Error("no log line for the ignored port")
	}
	// Only the queues of ports 0..2 and the control queues were set up.
	if _, ok := r.f.Queue(2 * (3 + 1)); ok {
		if qi, _ := r.f.Queue(2 * (3 + 1)); qi.Enabled {
			t.Error("queue of port 3 enabled beyond the cap")
		}
	}
}

func TestPortAddForIDBeyondMaxIgnored(t *testing.T) {
	r := newRig(t, rigOpts{
		plug: plugPorts(portSpec{id: 1, name: "p"}),
		bad:  &virtiotest.ConsoleMisbehaviour{PortAddOutOfRange: true},
	})
	r.port(1, "p")
	r.until("violation counted", func() bool { return r.d.Stats().Violations == 1 })
	if got := r.guestControl(31, virtiotest.CtrlPortReady); len(got) != 0 {
		t.Errorf("PORT_READY for id ≥ max_nr_ports: %+v", got)
	}
	if st := r.d.Stats(); st.Resets != 0 {
		t.Errorf("reset for an isolated control violation: %+v", st)
	}
}

func TestMisbehavingControlMessagesCountedAndIgnored(t *testing.T) {
	cases := []struct {
		name       string
		send       func(m *virtiotest.Console) bool
		violations uint64
		unknown    uint64
	}{
		{"short message", func(m *virtiotest.Console) bool { return m.SendRaw([]byte{1, 0, 0}) }, 1, 0},
		{"remove unknown port", func(m *virtiotest.Console) bool { return m.SendControl(7, virtiotest.CtrlPortRemove, 1, nil) }, 1, 0},
		{"open unknown port", func(m *virtiotest.Console) bool { return m.SendControl(9, virtiotest.CtrlPortOpen, 1, nil) }, 1, 0},
		{"bogus event", func(m *virtiotest.Console) bool { return m.SendControl(1, 99, 1, nil) }, 0, 1},
		{"driver-only event", func(m *virtiotest.Console) bool { return m.SendControl(1, virtiotest.CtrlPortReady, 1, nil) }, 0, 1},
		{"resize non-console", func(m *virtiotest.Console) bool {
			return m.SendControl(1, virtiotest.CtrlResize, 0, []byte{24, 0, 80, 0})
		}, 1, 0},
		{"id beyond max", func(m *virtiotest.Console) bool { return m.SendControl(1000, virtiotest.CtrlPortOpen, 1, nil) }, 1, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := newRig(t, rigOpts{plug: plugPorts(portSpec{id: 1, name: "p", host: true})})
			p := r.port(1, "p")
			r.until("host connected", p.HostConnected)
			if !c.send(r.m) {
				t.Fatal("model dropped the message")
			}
			r.until("counted", func() bool {
				st := r.d.Stats()
				return st.Violations == c.violations && st.UnknownControl == c.unknown
			})
			if st := r.d.Stats(); st.Resets != 0 {
				t.Errorf("reset: %+v", st)
			}
			if c.violations > 0 && !r.log.Contains("device protocol violation") {
				t.Error("violation not logged")
			}
			if c.unknown > 0 && !r.log.Contains("ignored control message") {
				t.Error("ignored event not logged")
			}
			// The device keeps working.
			if err := p.SetGuestOpen(r.ctx, true); err != nil {
				t.Fatal(err)
			}
			if err := r.m.HostWrite(1, []byte("ok")); err != nil {
				t.Fatal(err)
			}
			if got := r.recvN(p, 2); string(got) != "ok" {
				t.Fatalf("got %q", got)
			}
		})
	}
}

func TestBadPortNamesRejectedPortStaysUnnamed(t *testing.T) {
	cases := map[string][]byte{
		"slash":          []byte("a/b"),
		"dotdot":         []byte(".."),
		"not utf-8":      {0xff, 0xfe, 'x'},
		"nul inside":     []byte("a\x00b"),
		"over-long":      bytes.Repeat([]byte("n"), MaxNameLen+1),
		"truncated 5000": bytes.Repeat([]byte("n"), 5000), // QEMU truncates to the buffer, reports full length
	}
	for name, wire := range cases {
		t.Run(name, func(t *testing.T) {
			r := newRig(t, rigOpts{
				plug: plugPorts(portSpec{id: 1, name: "good"}),
				bad:  &virtiotest.ConsoleMisbehaviour{Name: wire},
			})
			p := r.port(1, "")
			r.until("violation", func() bool { return p.Stats().Violations == 1 })
			if got := p.Name(); got != "" {
				t.Errorf("name %q accepted", got)
			}
			if st := r.d.Stats(); st.Resets != 0 {
				t.Errorf("reset for a bad name: %+v", st)
			}
			if got := p.KernelName(); got != "vport0p1" {
				t.Errorf("KernelName %q", got)
			}
		})
	}
}

func TestPortNameStoredOnce(t *testing.T) {
	r := newRig(t, rigOpts{plug: plugPorts(portSpec{id: 1, name: "first"})})
	p := r.port(1, "first")
	r.m.SendControl(1, virtiotest.CtrlPortName, 1, []byte("second\x00"))
	r.m.SendControl(1, 99, 0, nil) // a marker: once counted, the name message was handled
	r.until("marker", func() bool { return r.d.Stats().UnknownControl == 1 })
	if got := p.Name(); got != "first" {
		t.Errorf("name changed to %q", got)
	}
}

func TestHostConnectDisconnectFiresChanged(t *testing.T) {
	bothRings(t, func(t *testing.T, packed bool) {
		r := newRig(t, rigOpts{packed: packed, plug: plugPorts(portSpec{id: 1, name: "p"})})
		p := r.port(1, "p")
		for _, want := range []bool{true, false, true} {
			ch := p.Changed()
			if err := r.m.HostConnect(1, want); err != nil {
				t.Fatal(err)
			}
			select {
			case <-ch:
			case <-r.ctx.Done():
				t.Fatalf("Changed did not fire for host connected=%v", want)
			}
			if got := p.HostConnected(); got != want {
				t.Errorf("HostConnected %v, want %v", got, want)
			}
		}
		// added, then changes for named, connected, disconnected, connected:
		// changes that come while one is still queued are one event ("look
		// again"), so there are one to four of them.
		var kinds []EventKind
		for done := false; !done; {
			select {
			case ev := <-r.d.Events():
				kinds = append(kinds, ev.Kind)
			case <-time.After(200 * time.Millisecond):
				done = true
			}
		}
		s := fmt.Sprint(kinds)
		if n := strings.Count(s, "changed"); !strings.HasPrefix(s, "[added") || n < 1 || n > 4 || len(kinds) != n+1 {
			t.Errorf("events %v", kinds)
		}
	})
}

func TestResizeSurfacedForConsolePort(t *testing.T) {
	for _, order := range []ResizeOrder{ResizeRowsCols, ResizeColsRows} {
		r := newRig(t, rigOpts{
			console: virtiotest.ConsoleConfig{OfferSize: true},
			cfg:     Config{ResizeOrder: order},
			plug:    plugPorts(portSpec{id: 0, name: "con", console: true}),
		})
		p := r.port(0, "con")
		r.until("console", p.IsConsole)
		ch := p.Changed()
		payload := []byte{24, 0, 80, 0}
		r.m.SendControl(0, virtiotest.CtrlResize, 0, payload)
		<-ch
		cols, rows := p.Size()
		want := [2]uint16{80, 24}
		if order == ResizeColsRows {
			want = [2]uint16{24, 80}
		}
		if [2]uint16{cols, rows} != want {
			t.Errorf("order %d: size %dx%d, want %dx%d", order, cols, rows, want[0], want[1])
		}
	}
}

func TestCloseSendsPortOpenZeroAndResets(t *testing.T) {
	m := virtiotest.NewConsole(virtiotest.ConsoleConfig{})
	plugPorts(portSpec{id: 1, name: "p", host: true})(m)
	f, fn := newFake(t, m, virtiotest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	d, err := Open(ctx, fn, Config{})
	if err != nil {
		t.Fatal(err)
	}
	p := d.Port(1)
	if err := p.SetGuestOpen(ctx, true); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	var last virtiotest.ControlMsg
	for _, c := range m.GuestControl() {
		if c.Event == virtiotest.CtrlPortOpen {
			last = c
		}
	}
	if last.ID != 1 || last.Value != 0 {
		t.Errorf("last PORT_OPEN %+v, want PORT_OPEN(1, 0)", last)
	}
	if f.Status() != 0 {
		t.Errorf("status %#x after Close, want reset", f.Status())
	}
	if n, _ := f.Heap().Live(); n != 0 {
		t.Errorf("%d allocations live after Close", n)
	}
	select {
	case <-d.Done():
	default:
		t.Error("Done not closed")
	}
	if !errors.Is(d.Err(), ErrClosed) {
		t.Errorf("Err %v", d.Err())
	}
	if _, err := p.Recv(ctx, io.Discard); err == nil {
		t.Error("Recv on a closed device succeeded")
	}
	for range d.Events() { // closed
	}
}

// --- recovery ---

func TestRingViolationResetsDeviceAndKeepsPorts(t *testing.T) {
	bothRings(t, func(t *testing.T, packed bool) {
		cases := []struct {
			name string
			tx   bool // on the transmitq (else the receiveq)
			bad  ringtest.Misbehaviour
		}{
			{"rx bad id", false, ringtest.Misbehaviour{BadID: true}},
			{"rx idx jump", false, ringtest.Misbehaviour{IdxJump: 5}},
			{"tx bad id", true, ringtest.Misbehaviour{BadID: true}},
			{"tx idx jump", true, ringtest.Misbehaviour{IdxJump: 1}},
			// A duplicate of a re-posted receive buffer is indistinguishable
			// from a real completion; on the transmitq the head is free.
			{"tx duplicate", true, ringtest.Misbehaviour{Duplicate: true}},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				r := newRig(t, rigOpts{packed: packed, plug: plugPorts(portSpec{id: 1, name: "p", host: true}, portSpec{id: 2, name: "q", host: true})})
				p := r.port(1, "p")
				q := r.port(2, "q")
				r.until("host connected", func() bool { return p.HostConnected() && q.HostConnected() })
				for _, x := range []*Port{p, q} {
					if err := x.SetGuestOpen(r.ctx, true); err != nil {
						t.Fatal(err)
					}
				}
				// One good buffer first (Duplicate needs a previous head).
				if c.tx {
					if _, err := p.Write(r.ctx, []byte("1")); err != nil {
						t.Fatal(err)
					}
					r.m.MisbehaveRing(virtiotest.TxQueue(1), c.bad, false)
					// Send, not Write: the bytes may be lost in the reset.
					if _, err := p.Send(r.ctx, strings.NewReader("2")); err != nil {
						t.Fatal(err)
					}
					// Nobody waits for transmit buffers, so the device is not
					// asked to interrupt: the next look at the ring (a Flush
					// here) finds the violation. The bytes may be lost.
					_ = p.Flush(r.ctx)
				} else {
					if err := r.m.HostWrite(1, []byte("1")); err != nil {
						t.Fatal(err)
					}
					r.recvN(p, 1)
					r.m.MisbehaveRing(virtiotest.RxQueue(1), c.bad, false)
					if err := r.m.HostWrite(1, []byte("2")); err != nil {
						t.Fatal(err)
					}
				}
				r.until("reset", func() bool { return r.d.Stats().Resets == 1 })
				r.until("port back", func() bool { return p.settled() && q.settled() })
				if r.d.Port(1) != p || r.d.Port(2) != q {
					t.Fatal("ports replaced although they came back with the same id and name")
				}
				if p.Stats().Violations != 1 {
					t.Errorf("port violations %d", p.Stats().Violations)
				}
				if !r.log.Contains("device fault, resetting") {
					t.Error("no log line for the reset")
				}
				// Guest-open state was re-sent, data flows again both ways.
				r.modelWait("guest open again", func() bool { return r.m.GuestConnected(1) && r.m.GuestConnected(2) })
				r.until("host connected again", func() bool { return p.HostConnected() && q.HostConnected() })
				if err := r.m.HostWrite(2, []byte("after")); err != nil {
					t.Fatal(err)
				}
				if got := r.recvN(q, 5); string(got) != "after" {
					t.Fatalf("got %q", got)
				}
				r.m.HostRead(1) // drop "1" and whatever of "2" went through
				if _, err := p.Write(r.ctx, []byte("out")); err != nil {
					t.Fatal(err)
				}
				if got, err := r.m.HostReadFull(r.ctx, 1, 3); err != nil || string(got) != "out" {
					t.Fatalf("host got %q %v", got, err)
				}
			})
		}
	})
}

func TestUsedLengthLongerThanPostedIsClamped(t *testing.T) {
	bothRings(t, func(t *testing.T, packed bool) {
		r := newRig(t, rigOpts{packed: packed, plug: plugPorts(portSpec{id: 1, name: "p", host: true})})
		p := r.port(1, "p")
		if err := p.SetGuestOpen(r.ctx, true); err != nil {
			t.Fatal(err)
		}
		r.m.MisbehaveRing(virtiotest.RxQueue(1), ringtest.Misbehaviour{LongLen: 1 << 20}, false)
		if err := r.m.HostWrite(1, []byte("abc")); err != nil {
			t.Fatal(err)
		}
		// The used length claims 1 MiB + 3: clamped to the 4096-byte buffer,
		// never read beyond it.
		got := r.recvN(p, bufSize)
		if !bytes.HasPrefix(got, []byte("abc")) {
			t.Fatalf("got %q...", got[:8])
		}
		if st := r.d.Stats(); st.Resets != 0 {
			t.Errorf("reset for a clamped length: %+v", st)
		}
	})
}

func TestDeviceNeedsResetRecovers(t *testing.T) {
	bothRings(t, func(t *testing.T, packed bool) {
		r := newRig(t, rigOpts{packed: packed, plug: plugPorts(portSpec{id: 1, name: "p", host: true})})
		p := r.port(1, "p")
		if err := p.SetGuestOpen(r.ctx, true); err != nil {
			t.Fatal(err)
		}
		r.m.NeedsReset()
		r.until("reset", func() bool { return r.d.Stats().Resets == 1 })
		r.until("port back", p.settled)
		r.modelWait("guest open again", func() bool { return r.m.GuestConnected(1) })
		if err := r.m.HostWrite(1, []byte("x")); err != nil {
			t.Fatal(err)
		}
		r.recvN(p, 1)
	})
}

func TestPortReplacedWhenNameChangesAcrossReset(t *testing.T) {
	r := newRig(t, rigOpts{plug: plugPorts(portSpec{id: 1, name: "old"}, portSpec{id: 2, name: "gone"})})
	p := r.port(1, "old")
	gone := r.port(2, "gone")
	r.m.SetMisbehaviour(virtiotest.ConsoleMisbehaviour{Name: []byte("new")})
	if err := r.m.Unplug(2); err != nil {
		t.Fatal(err)
	}
	r.until("gone removed", gone.Removed)
	r.m.NeedsReset()
	r.until("reset", func() bool { return r.d.Stats().Resets == 1 })
	np := r.port(1, "")
	r.until("renamed", func() bool { np = r.d.Port(1); return np != nil && np != p })
	if !p.Removed() {
		t.Error("old port not removed")
	}
}

func TestPortsNotReannouncedAfterResetAreRemoved(t *testing.T) {
	r := newRig(t, rigOpts{plug: plugPorts(portSpec{id: 1, name: "a"}, portSpec{id: 2, name: "b"})})
	a := r.port(1, "a")
	b := r.port(2, "b")
	// The device forgets port 2 without telling (its PORT_REMOVE is lost).
	if err := r.m.Forget(2); err != nil {
		t.Fatal(err)
	}
	if b.Removed() {
		t.Fatal("removed before the reset")
	}
	t0 := time.Now()
	r.m.NeedsReset()
	r.until("reset", func() bool { return r.d.Stats().Resets == 1 })
	r.until("a back", a.settled)
	// Not at once: the device may replay its PORT_ADDs late (QEMU does,
	// from its main loop); after reannounceGrace the port is gone.
	r.until("port 2 removed", b.Removed)
	if d := time.Since(t0); d < reannounceGrace/2 {
		t.Errorf("port 2 removed %v after the reset, before the grace period", d)
	}
	if r.d.Port(2) != nil {
		t.Error("port 2 still listed after its removal")
	}
	if r.d.Port(1) != a || a.Removed() {
		t.Error("port 1 replaced or removed")
	}
	if !r.log.Contains("not re-announced") {
		t.Errorf("no log line for the port that did not come back:\n%s", r.log)
	}
}

func TestPersistentMisbehaviourFailsDeviceAfterBoundedResets(t *testing.T) {
	r := newRig(t, rigOpts{cfg: Config{MaxResets: 3}, plug: plugPorts(portSpec{id: 1, name: "p", host: true})})
	p := r.port(1, "p")
	// Every control message the device returns carries a bad id, so every
	// re-initialisation fails again.
	r.m.MisbehaveRing(virtiotest.ControlRxQueue, ringtest.Misbehaviour{BadID: true}, true)
	r.m.SendControl(1, virtiotest.CtrlPortOpen, 0, nil)
	select {
	case <-r.d.Done():
	case <-r.ctx.Done():
		t.Fatalf("device never gave up\n%s", r.log)
	}
	err := r.d.Err()
	if err == nil || !errors.Is(err, ring.ErrDeviceProtocol) {
		t.Errorf("Err = %v, want a device protocol error", err)
	}
	if got := r.d.Stats().Resets; got != 3 {
		t.Errorf("%d resets, want the budget of 3", got)
	}
	if !p.Removed() {
		t.Error("port still live on a failed device")
	}
	if _, err := p.Recv(r.ctx, io.Discard); err == nil {
		t.Error("Recv on a failed device succeeded")
	}
	if st := r.f.Status(); st != 0 {
		t.Errorf("failed device not reset: status %#x", st)
	}
	r.m.MisbehaveRing(virtiotest.ControlRxQueue, ringtest.Misbehaviour{}, false)
}

func TestFlushReportsBytesLostInReset(t *testing.T) {
	r := newRig(t, rigOpts{plug: plugPorts(portSpec{id: 1, name: "p", host: true})})
	p := r.port(1, "p")
	r.until("host connected", p.HostConnected)
	if err := r.m.SetThrottled(1, true); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Send(r.ctx, strings.NewReader("doomed")); err != nil {
		t.Fatal(err)
	}
	r.m.NeedsReset()
	if err := p.Flush(r.ctx); !errors.Is(err, ErrDeviceReset) {
		t.Fatalf("Flush = %v, want ErrDeviceReset", err)
	}
	if err := p.Flush(r.ctx); err != nil {
		t.Fatalf("second Flush = %v, the loss is reported once", err)
	}
	if err := r.m.SetThrottled(1, false); err != nil {
		t.Fatal(err)
	}
	r.until("port back", func() bool { return p.settled() && p.HostConnected() })
	if _, err := p.Write(r.ctx, []byte("fine")); err != nil {
		t.Fatal(err)
	}
	if got, err := r.m.HostReadFull(r.ctx, 1, 4); err != nil || string(got) != "fine" {
		t.Fatalf("host got %q, %v", got, err)
	}
}

func TestCloseWaitsForReaderBeforeFreeingBuffers(t *testing.T) {
	r := newRig(t, rigOpts{plug: plugPorts(portSpec{id: 1, name: "p", host: true})})
	p := r.port(1, "p")
	if err := p.SetGuestOpen(r.ctx, true); err != nil {
		t.Fatal(err)
	}
	if err := r.m.HostWrite(1, []byte("slow")); err != nil {
		t.Fatal(err)
	}
	inWrite, release := make(chan []byte), make(chan struct{})
	done := make(chan error)
	go func() {
		_, err := p.Recv(r.ctx, writerFunc(func(b []byte) (int, error) {
			inWrite <- b
			<-release
			return len(b), nil
		}))
		done <- err
	}()
	b := <-inWrite
	closed := make(chan error)
	go func() { closed <- r.d.Close() }()
	select {
	case <-r.d.Done():
	case <-r.ctx.Done():
		t.Fatal("Close did not stop the device")
	}
	if n, _ := r.f.Heap().Live(); n == 0 {
		t.Fatal("memory freed while a reader still holds a receive buffer")
	}
	if string(b) != "slow" {
		t.Errorf("buffer changed under the reader: %q", b)
	}
	close(release)
	if err := <-done; err != nil {
		t.Errorf("Recv: %v", err)
	}
	if err := <-closed; err != nil {
		t.Errorf("Close: %v", err)
	}
	if n, _ := r.f.Heap().Live(); n != 0 {
		t.Errorf("%d allocations live after the reader returned", n)
	}
}

func TestInterruptSourceClosedFailsDevice(t *testing.T) {
	r := newRig(t, rigOpts{plug: plugPorts(portSpec{id: 1, name: "p"})})
	p := r.port(1, "p")
	if err := r.f.Close(); err != nil { // closes the eventfd under the driver
		t.Fatal(err)
	}
	select {
	case <-r.d.Done():
	case <-r.ctx.Done():
		t.Fatal("device kept running without its interrupt")
	}
	if err := r.d.Err(); err == nil || errors.Is(err, ErrClosed) {
		t.Errorf("Err = %v, want the wait failure", err)
	}
	if !p.Removed() {
		t.Error("port live on a failed device")
	}
}

func TestEndlessControlPingPongDoesNotHangDriver(t *testing.T) {
	r := newRig(t, rigOpts{
		plug: plugPorts(portSpec{id: 1, name: "p"}, portSpec{id: 2, name: "q"}),
		bad:  &virtiotest.ConsoleMisbehaviour{ReAddOnPortReady: true},
	})
	// Open returned although the device never stops talking; the driver
	// keeps serving other callers meanwhile.
	p := r.port(1, "p")
	r.until("violations pile up", func() bool { return r.d.Stats().Violations > 100 })
	if err := p.SetGuestOpen(r.ctx, true); err != nil {
		t.Fatal(err)
	}
	r.m.SetMisbehaviour(virtiotest.ConsoleMisbehaviour{})
	r.modelWait("guest open", func() bool { return r.m.GuestConnected(1) })
}

func TestDriverRestartRediscoversPorts(t *testing.T) {
	bothRings(t, func(t *testing.T, packed bool) {
		r := newRig(t, rigOpts{packed: packed, noOpen: true, plug: plugPorts(portSpec{id: 1, name: "a", host: true}, portSpec{id: 4, name: "b"})})
		for round := 0; round < 3; round++ {
			d, err := Open(r.ctx, r.fn, Config{Logger: r.logger()})
			if err != nil {
				t.Fatalf("round %d: Open: %v", round, err)
			}
			r.d = d
			a := r.port(1, "a")
			r.port(4, "b")
			if err := a.SetGuestOpen(r.ctx, true); err != nil {
				t.Fatal(err)
			}
			r.modelWait("guest open", func() bool { return r.m.GuestConnected(1) })
			if err := d.Close(); err != nil {
				t.Fatal(err)
			}
			if r.m.GuestConnected(1) {
				t.Errorf("round %d: port still guest-open after Close", round)
			}
			if n, _ := r.f.Heap().Live(); n != 0 {
				t.Fatalf("round %d: %d allocations live after Close", round, n)
			}
		}
	})
}

// countingFunction counts every register access and interrupt wait the
// driver makes.
type countingFunction struct {
	Function
	accesses, waits *atomic.Int64
}

func (c countingFunction) BAR(i int) (BAR, error) {
	b, err := c.Function.BAR(i)
	if err != nil {
		return nil, err
	}
	return countingBAR{b, c.accesses}, nil
}

func (c countingFunction) IRQ() IRQ { return countingIRQ{c.Function.IRQ(), c.waits} }

type countingBAR struct {
	BAR
	n *atomic.Int64
}

func (b countingBAR) Read8(off uint64) (uint8, error)   { b.n.Add(1); return b.BAR.Read8(off) }
func (b countingBAR) Read16(off uint64) (uint16, error) { b.n.Add(1); return b.BAR.Read16(off) }
func (b countingBAR) Read32(off uint64) (uint32, error) { b.n.Add(1); return b.BAR.Read32(off) }
func (b countingBAR) Write8(off uint64, v uint8) error  { b.n.Add(1); return b.BAR.Write8(off, v) }
func (b countingBAR) Write16(off uint64, v uint16) error {
	b.n.Add(1)
	return b.BAR.Write16(off, v)
}
func (b countingBAR) Write32(off uint64, v uint32) error {
	b.n.Add(1)
	return b.BAR.Write32(off, v)
}

type countingIRQ struct {
	IRQ
	n *atomic.Int64
}

func (q countingIRQ) Wait(ctx context.Context) error { q.n.Add(1); return q.IRQ.Wait(ctx) }

func TestIdleDeviceMakesNoAccesses(t *testing.T) {
	r := newRig(t, rigOpts{noOpen: true, plug: plugPorts(portSpec{id: 1, name: "p", host: true})})
	cf := countingFunction{Function: r.fn, accesses: new(atomic.Int64), waits: new(atomic.Int64)}
	d, err := Open(r.ctx, cf, Config{Logger: r.logger()})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	r.d = d
	p := r.port(1, "p")
	if err := p.SetGuestOpen(r.ctx, true); err != nil {
		t.Fatal(err)
	}
	pingPong(t, r, p, 3)
	// Let the event loop drain what is pending and park.
	r.until("parked", func() bool {
		w := cf.waits.Load()
		time.Sleep(20 * time.Millisecond)
		return cf.waits.Load() == w
	})
	a, w := cf.accesses.Load(), cf.waits.Load()
	time.Sleep(100 * time.Millisecond)
	// One late wake-up for an interrupt raised before the window (an ISR
	// read, nothing else) is tolerated; polling would show many.
	if a2, w2 := cf.accesses.Load(), cf.waits.Load(); a2-a > 1 || w2-w > 1 {
		t.Errorf("idle for 100ms: %d register accesses, %d interrupt waits: the driver polls", a2-a, w2-w)
	}
	// And it still wakes for the next interrupt.
	pingPong(t, r, p, 1)
}

func TestOpenFailingAfterQueueSetupResetsBeforeFreeing(t *testing.T) {
	r := newRig(t, rigOpts{noOpen: true, plug: plugPorts(portSpec{id: 1, name: "p"})})
	// The device breaks the control receiveq during the PORT_ADD replay.
	r.m.MisbehaveRing(virtiotest.ControlRxQueue, ringtest.Misbehaviour{BadID: true}, true)
	d, err := Open(r.ctx, r.fn, Config{Logger: r.logger()})
	if err == nil {
		d.Close()
		t.Fatal("Open succeeded on a device that broke its control queue")
	}
	if !errors.Is(err, ring.ErrDeviceProtocol) {
		t.Errorf("err = %v", err)
	}
	if st := r.f.Status(); st&^StatusFailed != 0 {
		t.Errorf("status %#x: device not reset before its memory was freed", st)
	}
	if n, _ := r.f.Heap().Live(); n != 0 {
		t.Errorf("%d allocations left", n)
	}
}
