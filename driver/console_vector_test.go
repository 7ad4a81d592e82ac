package driver

import (
	"bytes"
	"testing"
)

// vecReader is a BuffersReader over a byte slice that records its calls.
type vecReader struct {
	data  []byte
	calls []int // len(bufs) of each ReadBuffers call
	reads int   // plain Read calls
}

func (r *vecReader) Read(b []byte) (int, error) {
	r.reads++
	n := copy(b, r.data)
	r.data = r.data[n:]
	return n, nil
}

func (r *vecReader) ReadBuffers(bufs [][]byte) (int, error) {
	r.calls = append(r.calls, len(bufs))
	n := 0
	for _, b := range bufs {
		k := copy(b, r.data)
		r.data = r.data[k:]
		n += k
		if k < len(b) {
			break
		}
	}
	return n, nil
}

// vecWriter is a BuffersWriter that records its calls.
type vecWriter struct {
	got    bytes.Buffer
	calls  []int
	writes int
}

func (w *vecWriter) Write(b []byte) (int, error) {
	w.writes++
	return w.got.Write(b)
}

func (w *vecWriter) WriteBuffers(bufs [][]byte) (int, error) {
	w.calls = append(w.calls, len(bufs))
	n := 0
	for _, b := range bufs {
		k, _ := w.got.Write(b)
		n += k
	}
	return n, nil
}

func TestSendFillsEveryFreeBufferWithOneVectoredRead(t *testing.T) {
	r := newRig(t, rigOpts{cfg: Config{TxBuffers: 4, TxBufferSize: 8}, plug: plugPorts(portSpec{id: 1, name: "p", host: true})})
	p := r.port(1, "p")
	r.until("host connected", p.HostConnected)
	// The first Send fills its one 8-byte buffer: a stream, so the next
	// offers every free buffer to one vectored read.
	data := []byte("01234567abcdefghijklmnopqrst")
	src := &vecReader{data: append([]byte(nil), data...)}
	if n, err := p.Send(r.ctx, src); err != nil || n != 8 || src.reads != 1 || len(src.calls) != 0 {
		t.Fatalf("first Send = %d, %v (reads %d, vectored %v); want one plain 8-byte read", n, err, src.reads, src.calls)
	}
	n, err := p.Send(r.ctx, src) // 20 bytes: three 8-byte buffers
	if err != nil || n != 20 {
		t.Fatalf("Send = %d, %v; want 20", n, err)
	}
	if len(src.calls) != 1 || src.calls[0] < 3 || src.reads != 1 {
		t.Fatalf("ReadBuffers calls %v, Read calls %d; want one call with every free buffer (3 or 4)", src.calls, src.reads)
	}
	// It did not fill them all: the next Send reads one buffer again.
	src.data = []byte("z")
	if n, err := p.Send(r.ctx, src); err != nil || n != 1 || src.reads != 2 {
		t.Fatalf("Send after a short vectored read = %d, %v, plain reads %d", n, err, src.reads)
	}
	data = append(data, 'z')
	if err := p.Flush(r.ctx); err != nil {
		t.Fatal(err)
	}
	got, err := r.m.HostReadFull(r.ctx, 1, len(data))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("host got %q, %v; want %q", got, err, data)
	}
	if s := p.Stats(); s.BytesOut != uint64(len(data)) {
		t.Errorf("BytesOut = %d, want %d", s.BytesOut, len(data))
	}
	// The unused buffer went back: four more Sends need no wait.
	for i := range 4 {
		src := &vecReader{data: []byte{byte('0' + i)}}
		if _, err := p.Send(r.ctx, src); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Flush(r.ctx); err != nil {
		t.Fatal(err)
	}
	if got, err := r.m.HostReadFull(r.ctx, 1, 4); err != nil || string(got) != "0123" {
		t.Fatalf("host got %q, %v", got, err)
	}
}

func TestRecvHandsEveryFilledBufferToOneVectoredWrite(t *testing.T) {
	r := newRig(t, rigOpts{plug: plugPorts(portSpec{id: 1, name: "p", host: true})})
	p := r.port(1, "p")
	if err := p.SetGuestOpen(r.ctx, true); err != nil {
		t.Fatal(err)
	}
	r.modelWait("guest open", func() bool { return r.m.GuestConnected(1) })
	data := make([]byte, 3*bufSize+100)
	for i := range data {
		data[i] = byte(i * 7)
	}
	if err := r.m.HostWrite(1, data); err != nil {
		t.Fatal(err)
	}
	r.until("all buffers received", func() bool {
		r.d.mu.Lock()
		defer r.d.mu.Unlock()
		return p.s.fLen == 4
	})
	w := &vecWriter{}
	n, err := p.Recv(r.ctx, w)
	if err != nil || n != len(data) {
		t.Fatalf("Recv = %d, %v; want %d", n, err, len(data))
	}
	if len(w.calls) != 1 || w.calls[0] != 4 || w.writes != 0 {
		t.Fatalf("WriteBuffers calls %v, Write calls %d; want one call with 4 buffers", w.calls, w.writes)
	}
	if !bytes.Equal(w.got.Bytes(), data) {
		t.Fatal("bytes differ from what the host sent")
	}
	if s := p.Stats(); s.BytesIn != uint64(len(data)) || s.Discarded != 0 {
		t.Errorf("stats %+v", s)
	}
	// The buffers were re-posted: the next host write arrives.
	if err := r.m.HostWrite(1, []byte("again")); err != nil {
		t.Fatal(err)
	}
	if got := r.recvN(p, 5); string(got) != "again" {
		t.Fatalf("got %q", got)
	}
}
