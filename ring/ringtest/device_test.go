package ringtest_test

import (
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/vserial/vserial/dma/dmatest"
	"github.com/vserial/vserial/ring"
	"github.com/vserial/vserial/ring/ringtest"
)

// raw plays a driver that writes whatever descriptors a test wants.
type raw struct {
	t     *testing.T
	heap  *dmatest.Heap
	desc  []byte
	avail []byte
	idx   uint16
	dev   *ringtest.Device
	buf   uint64 // a live 4 KiB buffer
	tbl   uint64 // a live 4 KiB area for indirect tables
	tblB  []byte
}

func newRaw(t *testing.T, size uint16, indirect bool) *raw {
	h := dmatest.NewHeap()
	cfg := ring.Config{Size: size}
	if indirect {
		cfg.Indirect = 2
	}
	q, err := ring.New(h, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	dev, err := ringtest.New(h, ringtest.ConfigFor(q, cfg))
	if err != nil {
		t.Fatal(err)
	}
	r := &raw{t: t, heap: h, dev: dev}
	r.desc, _ = h.Resolve(q.DescAddr(), 16*int(size))
	r.avail, _ = h.Resolve(q.DriverAddr(), 4+2*int(size))
	b, _ := h.Alloc(4096, 16)
	tb, _ := h.Alloc(4096, 16)
	r.buf, r.tbl, r.tblB = b.Addr(), tb.Addr(), tb.Bytes()
	return r
}

func put(t []byte, i int, addr uint64, n uint32, flags, next uint16) {
	binary.LittleEndian.PutUint64(t[16*i:], addr)
	binary.LittleEndian.PutUint32(t[16*i+8:], n)
	binary.LittleEndian.PutUint16(t[16*i+12:], flags)
	binary.LittleEndian.PutUint16(t[16*i+14:], next)
}

func (r *raw) publish(head uint16) {
	size := len(r.desc) / 16
	binary.LittleEndian.PutUint16(r.avail[4+2*(int(r.idx)%size):], head)
	r.idx++
	binary.LittleEndian.PutUint16(r.avail[2:], r.idx)
}

func (r *raw) wantErr(substr string) {
	r.t.Helper()
	_, ok, err := r.dev.Pop()
	if !errors.Is(err, ringtest.ErrDescriptor) || ok || !strings.Contains(err.Error(), substr) {
		r.t.Fatalf("Pop = %v, %v; want ErrDescriptor containing %q", ok, err, substr)
	}
}

func TestDeviceRejectsDescriptorLoop(t *testing.T) {
	r := newRaw(t, 4, false)
	put(r.desc, 0, r.buf, 1, 1, 1)
	put(r.desc, 1, r.buf, 1, 1, 0)
	r.publish(0)
	r.wantErr("loops")
}

func TestDeviceRejectsNextOutOfRange(t *testing.T) {
	r := newRaw(t, 4, false)
	put(r.desc, 2, r.buf, 1, 1, 4)
	r.publish(2)
	r.wantErr("out of range")
	r.publish(9) // head itself out of range
	r.wantErr("out of range")
}

func TestDeviceRejectsReadableAfterWritable(t *testing.T) {
	r := newRaw(t, 4, false)
	put(r.desc, 0, r.buf, 1, 2|1, 1)
	put(r.desc, 1, r.buf, 1, 0, 0)
	r.publish(0)
	r.wantErr("readable descriptor after")
}

func TestDeviceRejectsUnresolvableBuffer(t *testing.T) {
	r := newRaw(t, 4, false)
	put(r.desc, 0, r.buf, 4097, 0, 0) // runs past the allocation
	r.publish(0)
	r.wantErr("buffer")
}

func TestDeviceRejectsAvailIdxJump(t *testing.T) {
	r := newRaw(t, 4, false)
	binary.LittleEndian.PutUint16(r.avail[2:], 5)
	r.wantErr("more than the queue size")
}

func TestDeviceRejectsBadIndirectTables(t *testing.T) {
	cases := []struct {
		name  string
		setup func(r *raw)
		want  string
	}{
		{"not negotiated", nil, "without VIRTIO_F_INDIRECT_DESC"},
		{"length not multiple of 16", func(r *raw) { put(r.desc, 0, r.tbl, 24, 4, 0) }, "multiple of 16"},
		{"zero length", func(r *raw) { put(r.desc, 0, r.tbl, 0, 4, 0) }, "multiple of 16"},
		{"with NEXT", func(r *raw) { put(r.desc, 0, r.tbl, 32, 4|1, 1) }, "with NEXT"},
		{"indirect inside indirect", func(r *raw) {
			put(r.desc, 0, r.tbl, 32, 4, 0)
			put(r.tblB, 0, r.buf, 1, 1, 1)
			put(r.tblB, 1, r.tbl, 32, 4, 0)
		}, "inside an indirect table"},
		{"loop inside table", func(r *raw) {
			put(r.desc, 0, r.tbl, 32, 4, 0)
			put(r.tblB, 0, r.buf, 1, 1, 1)
			put(r.tblB, 1, r.buf, 1, 1, 0)
		}, "loops"},
		{"next past table end", func(r *raw) {
			put(r.desc, 0, r.tbl, 32, 4, 0)
			put(r.tblB, 0, r.buf, 1, 1, 2)
		}, "out of range"},
		{"table longer than queue", func(r *raw) { put(r.desc, 0, r.tbl, 16*5, 4, 0) }, "longer than the queue"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := newRaw(t, 4, c.setup != nil)
			if c.setup == nil {
				put(r.desc, 0, r.tbl, 32, 4, 0)
			} else {
				c.setup(r)
			}
			r.publish(0)
			r.wantErr(c.want)
		})
	}
}

// A chain of normal descriptors may end in one indirect table (spec 2.7.5.3.1).
func TestDeviceFollowsDirectThenIndirect(t *testing.T) {
	r := newRaw(t, 4, true)
	put(r.desc, 0, r.buf, 3, 1, 1)
	put(r.desc, 1, r.tbl, 32, 4, 0)
	put(r.tblB, 0, r.buf+8, 5, 1, 1)
	put(r.tblB, 1, r.buf+16, 7, 2, 0)
	r.publish(0)
	c, ok, err := r.dev.Pop()
	if err != nil || !ok {
		t.Fatalf("Pop = %v, %v", ok, err)
	}
	if len(c.Bufs) != 3 || c.Bufs[0].Len != 3 || c.Bufs[1].Len != 5 || !c.Bufs[2].Write || len(c.Bufs[2].Data) != 7 {
		t.Fatalf("bufs %+v", c.Bufs)
	}
	if c.Writable() != 7 {
		t.Fatalf("Writable = %d", c.Writable())
	}
}

func TestDeviceKickCounting(t *testing.T) {
	r := newRaw(t, 2, false)
	r.dev.Kick()
	r.dev.Kick()
	if r.dev.Kicks() != 2 {
		t.Fatalf("Kicks = %d", r.dev.Kicks())
	}
	select {
	case <-r.dev.Kicked():
	default:
		t.Fatal("Kicked channel empty after Kick")
	}
}

func TestNewRejectsUnresolvableAreas(t *testing.T) {
	h := dmatest.NewHeap()
	if _, err := ringtest.New(h, ringtest.Config{Size: 4, Desc: 0x1000, Driver: 0x2000, Device: 0x3000}); err == nil {
		t.Fatal("New over unmapped addresses succeeded")
	}
	if _, err := ringtest.New(h, ringtest.Config{Size: 3}); err == nil {
		t.Fatal("New with size 3 succeeded")
	}
}
