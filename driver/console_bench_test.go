package driver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/vserial/vserial/driver/virtiotest"
)

// benchRig brings up a device with one open, host-connected port.
func benchRig(b *testing.B) (*virtiotest.Console, *Device, *Port) {
	b.Helper()
	m := virtiotest.NewConsole(virtiotest.ConsoleConfig{})
	if err := m.Plug(1, "bench", false); err != nil {
		b.Fatal(err)
	}
	if err := m.HostConnect(1, true); err != nil {
		b.Fatal(err)
	}
	_, fn := newFake(b, m, virtiotest.Options{})
	d, err := Open(context.Background(), fn, Config{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { d.Close() })
	p := d.Port(1)
	if p == nil {
		b.Fatal("no port 1")
	}
	if err := p.SetGuestOpen(context.Background(), true); err != nil {
		b.Fatal(err)
	}
	for !m.GuestConnected(1) || !p.HostConnected() {
		<-m.Changed()
	}
	return m, d, p
}

// sink takes bytes handed out by Recv into a fixed buffer.
type sink struct {
	buf []byte
	n   int
}

func (s *sink) Write(b []byte) (int, error) {
	s.n += copy(s.buf[s.n:], b)
	return len(b), nil
}

// source serves a fixed buffer once per reset.
type source struct {
	buf []byte
	off int
}

func (s *source) Read(b []byte) (int, error) {
	if s.off == len(s.buf) {
		return 0, io.EOF
	}
	n := copy(b, s.buf[s.off:])
	s.off += n
	return n, nil
}

// BenchmarkPortRoundTrip: host writes size bytes, the guest receives them
// (Recv, straight from the receive buffers) and sends them back (Send,
// straight into transmit buffers, then Flush), the host reads them. One op
// is one full round trip through the driver, the fake function and the
// console model.
func BenchmarkPortRoundTrip(b *testing.B) {
	for _, size := range []int{1, 512, 4096} {
		b.Run(fmt.Sprintf("%dB", size), func(b *testing.B) {
			m, _, p := benchRig(b)
			ctx := context.Background()
			msg := make([]byte, size)
			for i := range msg {
				msg[i] = byte(i)
			}
			in := &sink{buf: make([]byte, size)}
			out := &source{}
			back := make([]byte, size)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if err := m.HostWrite(1, msg); err != nil {
					b.Fatal(err)
				}
				in.n = 0
				for in.n < size {
					if _, err := p.Recv(ctx, in); err != nil {
						b.Fatal(err)
					}
				}
				out.buf, out.off = in.buf[:in.n], 0
				for out.off < len(out.buf) {
					if _, err := p.Send(ctx, out); err != nil && err != io.EOF {
						b.Fatal(err)
					}
				}
				if err := p.Flush(ctx); err != nil {
					b.Fatal(err)
				}
				// QEMU (and the model) consume the transmitq synchronously
				// on the kick, so the bytes are at the host by now.
				if n := m.HostReadInto(1, back); n != size {
					b.Fatalf("host got %d bytes, want %d", n, size)
				}
			}
		})
	}
}

// BenchmarkPortSend measures guest→host streaming with several transmit
// buffers in flight.
func BenchmarkPortSend(b *testing.B) {
	m, _, p := benchRig(b)
	ctx := context.Background()
	src := &source{buf: make([]byte, 64<<10)}
	drain := make([]byte, 128<<10)
	b.SetBytes(int64(len(src.buf)))
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		src.off = 0
		for src.off < len(src.buf) {
			if _, err := p.Send(ctx, src); err != nil && err != io.EOF {
				b.Fatal(err)
			}
		}
		m.HostReadInto(1, drain)
	}
	if err := p.Flush(ctx); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkPortRecv measures host→guest streaming.
func BenchmarkPortRecv(b *testing.B) {
	m, _, p := benchRig(b)
	ctx := context.Background()
	chunk := make([]byte, 64<<10)
	in := &sink{buf: make([]byte, len(chunk))}
	b.SetBytes(int64(len(chunk)))
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if err := m.HostWrite(1, chunk); err != nil {
			b.Fatal(err)
		}
		in.n = 0
		for in.n < len(chunk) {
			if _, err := p.Recv(ctx, in); err != nil {
				b.Fatal(err)
			}
		}
	}
}

var errOneBuffer = errors.New("stop after one buffer")

// TestSteadyStateDataPathAllocatesNothing pins the zero-allocation data
// path of the driver itself. The fake function allocates on doorbells and
// interrupt waits, so the device is told to want no kicks and no interrupt
// happens while allocations are counted (testing.AllocsPerRun counts every
// goroutine).
func TestSteadyStateDataPathAllocatesNothing(t *testing.T) {
	r := newRig(t, rigOpts{cfg: Config{TxBuffers: 128}, plug: plugPorts(portSpec{id: 1, name: "p", host: true})})
	p := r.port(1, "p")
	r.until("host connected", p.HostConnected)
	if err := p.SetGuestOpen(r.ctx, true); err != nil {
		t.Fatal(err)
	}
	r.modelWait("guest open", func() bool { return r.m.GuestConnected(1) })

	// Receive: 100 buffers filled up front; each Recv hands one to w and
	// re-posts it.
	r.m.SetQueueNotify(virtiotest.RxQueue(1), false)
	if err := r.m.HostWrite(1, make([]byte, 100*bufSize)); err != nil {
		t.Fatal(err)
	}
	r.until("buffers filled", func() bool { p.d.mu.Lock(); defer p.d.mu.Unlock(); return p.s.fLen == 100 })
	w := writerFunc(func(b []byte) (int, error) { return len(b), errOneBuffer })
	if n := testing.AllocsPerRun(50, func() {
		if _, err := p.Recv(r.ctx, w); err != errOneBuffer {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("Recv: %v allocations per buffer", n)
	}

	// Send: the host stops reading, so buffers stay in flight and the
	// device asks for no kick.
	if err := r.m.SetThrottled(1, true); err != nil {
		t.Fatal(err)
	}
	r.m.SetQueueNotify(virtiotest.TxQueue(1), false)
	src := &source{buf: make([]byte, 100)}
	if n := testing.AllocsPerRun(50, func() {
		src.off = 0
		if _, err := p.Send(r.ctx, src); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("Send: %v allocations per buffer", n)
	}
	r.m.SetQueueNotify(virtiotest.TxQueue(1), true)
	if err := r.m.SetThrottled(1, false); err != nil {
		t.Fatal(err)
	}
	if err := p.Flush(r.ctx); err != nil {
		t.Fatal(err)
	}
}
