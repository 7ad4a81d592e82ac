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
	data := []byte("abcdefghijklmnopqrst") // 20 bytes: three 8-byte buffers
	src := &vecReader{data: append([]byte(nil), data...)}
	n, err := p.Send(r.ctx, src)
	if err != nil || n != len(data) {
		t.Fatalf("Send = %d, %v; want %d", n, err, len(data))
	}
	if len(src.calls) != 1 || src.calls[0] != 4 || src.reads != 0 {
		t.Fatalf("ReadBuffers calls %v, Read calls %d; want one call with all 4 free buffers", src.calls, src.reads)
	}
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
