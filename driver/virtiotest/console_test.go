package virtiotest_test

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/vserial/vserial/dma"
	"github.com/vserial/vserial/dma/dmatest"
	"github.com/vserial/vserial/driver/virtiotest"
	"github.com/vserial/vserial/ring"
	"github.com/vserial/vserial/ring/ringtest"
)

// conBus plays the function and a minimal driver around a Console: real
// ring.Queues over heap memory on the driver side, ringtest devices on the
// model's side.
type conBus struct {
	t          *testing.T
	heap       *dmatest.Heap
	negotiated uint64
	drv        map[uint16]*ring.Queue
	dev        map[uint16]*ringtest.Device
	bufs       map[uint16]map[uint16]dma.Region // queue → head → buffer
	irqs       map[uint16]int
	configs    int
	needsReset int
}

func (b *conBus) Queue(q uint16) ringtest.Queue {
	if d, ok := b.dev[q]; ok {
		return d // a missing queue must be a nil interface, not a nil *Device
	}
	return nil
}

func (b *conBus) Negotiated() uint64 { return b.negotiated }
func (b *conBus) Interrupt(q uint16) { b.irqs[q]++ }
func (b *conBus) ConfigChanged()     { b.configs++ }
func (b *conBus) NeedsReset()        { b.needsReset++ }

// startConsole creates every queue the console offers, and starts it with
// the given negotiated features.
func startConsole(t *testing.T, c *virtiotest.Console, negotiated uint64) *conBus {
	t.Helper()
	b := &conBus{t: t, heap: dmatest.NewHeap(), negotiated: negotiated,
		drv: map[uint16]*ring.Queue{}, dev: map[uint16]*ringtest.Device{},
		bufs: map[uint16]map[uint16]dma.Region{}, irqs: map[uint16]int{}}
	for q := uint16(0); c.QueueMax(q) != 0; q++ {
		cfg := ring.Config{Size: c.QueueMax(q), EventIdx: negotiated&virtiotest.FeatureEventIdx != 0}
		dq, err := ring.New(b.heap, cfg)
		if err != nil {
			t.Fatal(err)
		}
		dv, err := ringtest.New(b.heap, ringtest.ConfigFor(dq, cfg))
		if err != nil {
			t.Fatal(err)
		}
		b.drv[q], b.dev[q], b.bufs[q] = dq, dv, map[uint16]dma.Region{}
	}
	c.Start(b)
	return b
}

// post adds n device-writable buffers of size bytes to q.
func (b *conBus) post(q uint16, n, size int) {
	b.t.Helper()
	for range n {
		r, err := b.heap.Alloc(size, 8)
		if err != nil {
			b.t.Fatal(err)
		}
		h, err := b.drv[q].Add([]ring.Segment{{Addr: r.Addr(), Len: uint32(size), Write: true}})
		if err != nil {
			b.t.Fatal(err)
		}
		b.bufs[q][h] = r
	}
	b.drv[q].Publish()
}

// send adds a device-readable buffer with data to q and kicks the model.
func (b *conBus) send(c *virtiotest.Console, q uint16, data []byte) {
	b.t.Helper()
	r, err := b.heap.Alloc(len(data), 8)
	if err != nil {
		b.t.Fatal(err)
	}
	copy(r.Bytes(), data)
	h, err := b.drv[q].Add([]ring.Segment{{Addr: r.Addr(), Len: uint32(len(data))}})
	if err != nil {
		b.t.Fatal(err)
	}
	b.bufs[q][h] = r
	b.drv[q].Publish()
	c.Notify(q)
}

// used pops every used buffer of q and returns their contents (clamped
// lengths) and reported lengths.
func (b *conBus) used(q uint16) (data [][]byte, lens []uint32) {
	b.t.Helper()
	for {
		u, ok, err := b.drv[q].Pop()
		if err != nil {
			b.t.Fatal(err)
		}
		if !ok {
			return data, lens
		}
		r := b.bufs[q][u.Head]
		data = append(data, append([]byte(nil), r.Bytes()[:min(int(u.Len), r.Len())]...))
		lens = append(lens, u.Len)
	}
}

func ctl(id uint32, ev, val uint16) []byte {
	m := make([]byte, 8)
	binary.LittleEndian.PutUint32(m, id)
	binary.LittleEndian.PutUint16(m[4:], ev)
	binary.LittleEndian.PutUint16(m[6:], val)
	return m
}

type msg struct {
	id      uint32
	ev, val uint16
	payload string
}

func parse(t *testing.T, bs [][]byte) []msg {
	t.Helper()
	var out []msg
	for _, b := range bs {
		if len(b) < 8 {
			t.Fatalf("control message of %d bytes", len(b))
		}
		out = append(out, msg{binary.LittleEndian.Uint32(b), binary.LittleEndian.Uint16(b[4:]), binary.LittleEndian.Uint16(b[6:]), string(b[8:])})
	}
	return out
}

const multiport = virtiotest.FeatureMultiport | virtiotest.FeatureEventIdx

func TestConsoleOffersLikeQEMU(t *testing.T) {
	c := virtiotest.NewConsole(virtiotest.ConsoleConfig{})
	want := uint64(virtiotest.FeatureMultiport | virtiotest.FeatureEmergWrite | virtiotest.FeatureEventIdx | virtiotest.FeatureIndirect)
	if f := c.Features(); f != want {
		t.Errorf("features %#x, want %#x", f, want)
	}
	if c.QueueMax(0) != 128 || c.QueueMax(2) != 32 || c.QueueMax(3) != 32 || c.QueueMax(63) != 128 || c.QueueMax(64) != 0 {
		t.Errorf("queue sizes %d %d %d %d %d", c.QueueMax(0), c.QueueMax(2), c.QueueMax(3), c.QueueMax(63), c.QueueMax(64))
	}
	cfg := make([]byte, 12)
	c.ReadConfig(0, cfg)
	if !bytes.Equal(cfg, []byte{0, 0, 0, 0, 31, 0, 0, 0, 0, 0, 0, 0}) {
		t.Errorf("config % x: cols, rows 0 and max_nr_ports 31", cfg)
	}
	single := virtiotest.NewConsole(virtiotest.ConsoleConfig{MaxPorts: 1, NoEmergWrite: true})
	if f := single.Features(); f&(virtiotest.FeatureMultiport|virtiotest.FeatureEmergWrite) != 0 {
		t.Errorf("max_ports 1 offers %#x: MULTIPORT is offered only for max_ports > 1", f)
	}
	if single.QueueMax(2) != 0 {
		t.Error("control queues without MULTIPORT")
	}
}

func TestConsolePortAddReplayedOnEveryDeviceReady(t *testing.T) {
	c := virtiotest.NewConsole(virtiotest.ConsoleConfig{})
	for _, id := range []uint32{4, 1, 0} {
		if err := c.Plug(id, "", id == 0); err != nil {
			t.Fatal(err)
		}
	}
	b := startConsole(t, c, multiport)
	b.post(2, 32, 64)
	for round := 0; round < 2; round++ {
		b.send(c, 3, ctl(0xffffffff, virtiotest.CtrlDeviceReady, 1))
		data, _ := b.used(2)
		got := parse(t, data)
		want := []msg{{4, 1, 1, ""}, {1, 1, 1, ""}, {0, 1, 1, ""}}
		if len(got) != 3 || got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
			t.Errorf("round %d: %+v, want PORT_ADD in plug order %+v", round, got, want)
		}
		b.post(2, 3, 64)
	}
	if _, lens := b.used(3); len(lens) != 2 || lens[0] != 0 || lens[1] != 0 {
		t.Errorf("control transmit used lengths %v, want 0s", lens)
	}
	// DEVICE_READY(0) announces nothing.
	b.send(c, 3, ctl(0xffffffff, virtiotest.CtrlDeviceReady, 0))
	if data, _ := b.used(2); len(data) != 0 {
		t.Errorf("DEVICE_READY(0) answered with %d messages", len(data))
	}
}

func TestConsolePortReadySequenceWithTrailingNUL(t *testing.T) {
	c := virtiotest.NewConsole(virtiotest.ConsoleConfig{})
	if err := c.Plug(0, "hvc", true); err != nil {
		t.Fatal(err)
	}
	if err := c.Plug(1, "org.qemu.guest_agent.0", false); err != nil {
		t.Fatal(err)
	}
	if err := c.HostConnect(1, true); err != nil {
		t.Fatal(err)
	}
	b := startConsole(t, c, multiport)
	b.post(2, 32, 64)
	b.send(c, 3, ctl(0, virtiotest.CtrlPortReady, 1))
	b.send(c, 3, ctl(1, virtiotest.CtrlPortReady, 1))
	got := parse(t, func() [][]byte { d, _ := b.used(2); return d }())
	want := []msg{
		{0, virtiotest.CtrlConsolePort, 1, ""},
		{0, virtiotest.CtrlPortName, 1, "hvc\x00"},
		{0, virtiotest.CtrlPortOpen, 1, ""}, // a virtconsole with a chardev is host-connected
		{1, virtiotest.CtrlPortName, 1, "org.qemu.guest_agent.0\x00"},
		{1, virtiotest.CtrlPortOpen, 1, ""},
	}
	if len(got) != len(want) {
		t.Fatalf("got %+v\nwant %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("message %d: %+v, want %+v", i, got[i], want[i])
		}
	}
	if !c.PortReady(0) || !c.PortReady(1) {
		t.Error("ports not ready")
	}
}

func TestConsoleDropsControlWithoutBufferAndReportsFullLength(t *testing.T) {
	c := virtiotest.NewConsole(virtiotest.ConsoleConfig{})
	long := string(bytes.Repeat([]byte("n"), 100))
	if err := c.Plug(1, long, false); err != nil {
		t.Fatal(err)
	}
	b := startConsole(t, c, multiport)
	b.send(c, 3, ctl(1, virtiotest.CtrlPortReady, 1)) // no control buffer: PORT_NAME dropped
	if st := c.Stats(); st.ControlDropped != 1 {
		t.Errorf("dropped %d, want 1", st.ControlDropped)
	}
	b.post(2, 1, 32) // too small for header + 100 + NUL
	b.send(c, 3, ctl(1, virtiotest.CtrlPortReady, 1))
	data, lens := b.used(2)
	// QEMU reports the full 8+100+1 bytes; the ring clamps to the 32
	// posted and counts it.
	if len(lens) != 1 || lens[0] != 32 || b.drv[2].Stats().Clamped != 1 {
		t.Fatalf("used lengths %v, clamped %d: want one over-long length", lens, b.drv[2].Stats().Clamped)
	}
	if string(data[0][8:]) != long[:24] {
		t.Errorf("truncated payload %q", data[0][8:])
	}
}

func TestConsoleGuestDataDiscardedWhileHostDisconnected(t *testing.T) {
	c := virtiotest.NewConsole(virtiotest.ConsoleConfig{})
	if err := c.Plug(1, "p", false); err != nil {
		t.Fatal(err)
	}
	b := startConsole(t, c, multiport)
	b.send(c, virtiotest.TxQueue(1), []byte("lost"))
	if _, lens := b.used(virtiotest.TxQueue(1)); len(lens) != 1 || lens[0] != 0 {
		t.Errorf("used lengths %v, want one 0", lens)
	}
	if got := c.HostRead(1); len(got) != 0 || c.Stats().TxDiscarded != 4 {
		t.Errorf("host got %q, discarded %d", got, c.Stats().TxDiscarded)
	}
	if err := c.HostConnect(1, true); err != nil {
		t.Fatal(err)
	}
	b.send(c, virtiotest.TxQueue(1), []byte("kept"))
	if got := c.HostRead(1); string(got) != "kept" {
		t.Errorf("host got %q", got)
	}
	// A throttled host leaves the chain available: back-pressure.
	if err := c.SetThrottled(1, true); err != nil {
		t.Fatal(err)
	}
	b.send(c, virtiotest.TxQueue(1), []byte("wait"))
	b.used(virtiotest.TxQueue(1))
	if _, lens := b.used(virtiotest.TxQueue(1)); len(lens) != 0 {
		t.Error("throttled host consumed a chain")
	}
	if err := c.SetThrottled(1, false); err != nil {
		t.Fatal(err)
	}
	if got := c.HostRead(1); string(got) != "wait" {
		t.Errorf("host got %q after un-throttling", got)
	}
}

func TestConsoleHostDataHeldUntilGuestOpens(t *testing.T) {
	c := virtiotest.NewConsole(virtiotest.ConsoleConfig{})
	if err := c.Plug(1, "p", false); err != nil {
		t.Fatal(err)
	}
	if err := c.HostConnect(1, true); err != nil {
		t.Fatal(err)
	}
	b := startConsole(t, c, multiport)
	rx := virtiotest.RxQueue(1)
	b.post(rx, 4, 4)
	if err := c.HostWrite(1, []byte("0123456789")); err != nil {
		t.Fatal(err)
	}
	if data, _ := b.used(rx); len(data) != 0 || c.HostPending(1) != 10 {
		t.Fatalf("delivered %d buffers to a closed guest port", len(data))
	}
	b.send(c, 3, ctl(1, virtiotest.CtrlPortOpen, 1))
	data, lens := b.used(rx)
	if len(data) != 3 || string(bytes.Join(data, nil)) != "0123456789" || lens[2] != 2 {
		t.Errorf("got %q lens %v", data, lens)
	}
	if b.irqs[rx] == 0 {
		t.Error("no interrupt for filled receive buffers")
	}
}

func TestConsoleResetDisconnectsGuestKeepsHost(t *testing.T) {
	c := virtiotest.NewConsole(virtiotest.ConsoleConfig{})
	if err := c.Plug(1, "p", false); err != nil {
		t.Fatal(err)
	}
	if err := c.HostConnect(1, true); err != nil {
		t.Fatal(err)
	}
	b := startConsole(t, c, multiport)
	b.send(c, 3, ctl(1, virtiotest.CtrlPortOpen, 1))
	if !c.GuestConnected(1) {
		t.Fatal("guest not connected")
	}
	c.Reset()
	if c.GuestConnected(1) || c.PortReady(1) || c.DeviceReady() || c.Started() {
		t.Error("reset kept guest-side state")
	}
	b = startConsole(t, c, multiport)
	b.post(2, 8, 64)
	b.send(c, 3, ctl(1, virtiotest.CtrlPortReady, 1))
	got := parse(t, func() [][]byte { d, _ := b.used(2); return d }())
	if len(got) != 2 || got[1] != (msg{1, virtiotest.CtrlPortOpen, 1, ""}) {
		t.Errorf("after reset %+v: host connection re-announced after PORT_READY", got)
	}
}

func TestConsoleHotPlugAndUnplug(t *testing.T) {
	c := virtiotest.NewConsole(virtiotest.ConsoleConfig{})
	b := startConsole(t, c, multiport)
	b.post(2, 8, 64)
	if err := c.Plug(2, "hot", false); err != nil {
		t.Fatal(err)
	}
	if err := c.HostConnect(2, true); err != nil {
		t.Fatal(err)
	}
	b.send(c, virtiotest.TxQueue(2), []byte("pending")) // consumed: host connected
	if err := c.SetThrottled(2, true); err != nil {
		t.Fatal(err)
	}
	b.send(c, virtiotest.TxQueue(2), []byte("held"))
	if err := c.Unplug(2); err != nil {
		t.Fatal(err)
	}
	got := parse(t, func() [][]byte { d, _ := b.used(2); return d }())
	want := []msg{{2, virtiotest.CtrlPortAdd, 1, ""}, {2, virtiotest.CtrlPortOpen, 1, ""}, {2, virtiotest.CtrlPortRemove, 1, ""}}
	if len(got) != 3 || got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
		t.Errorf("got %+v, want %+v", got, want)
	}
	if b.configs != 1 {
		t.Errorf("%d config interrupts, want 1 (for the plug)", b.configs)
	}
	if _, lens := b.used(virtiotest.TxQueue(2)); len(lens) != 2 {
		t.Errorf("%d transmit chains returned, want 2 (one sent, one discarded at unplug)", len(lens))
	}
	if err := c.Plug(40, "x", false); err == nil {
		t.Error("plugged id beyond max_ports")
	}
}

func TestConsoleEmergencyWrite(t *testing.T) {
	c := virtiotest.NewConsole(virtiotest.ConsoleConfig{})
	c.WriteConfig(8, []byte{'!', 0, 0, 0}) // no console yet
	if err := c.Plug(0, "", true); err != nil {
		t.Fatal(err)
	}
	c.WriteConfig(8, []byte{0, 0, 0, 0}) // a 0 byte cannot be sent
	c.WriteConfig(8, []byte{'A', 0, 0, 0})
	if got := c.HostRead(0); string(got) != "A" {
		t.Errorf("console got %q", got)
	}
	if got := c.EmergencyBytes(); string(got) != "!" {
		t.Errorf("unrouted emergency bytes %q", got)
	}
}

func TestConsoleDescriptorErrorNeedsReset(t *testing.T) {
	c := virtiotest.NewConsole(virtiotest.ConsoleConfig{})
	b := startConsole(t, c, multiport)
	// A chain pointing outside any allocation.
	h, err := b.drv[3].Add([]ring.Segment{{Addr: 0x10, Len: 8}})
	if err != nil {
		t.Fatal(err)
	}
	_ = h
	b.drv[3].Publish()
	c.Notify(3)
	if b.needsReset != 1 || c.Stats().DescErrors != 1 {
		t.Errorf("needsReset %d, desc errors %d", b.needsReset, c.Stats().DescErrors)
	}
}
