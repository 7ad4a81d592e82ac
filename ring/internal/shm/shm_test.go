package shm

import (
	"encoding/binary"
	"testing"
)

func TestWordHalvesAreLittleEndianFields(t *testing.T) {
	if !LittleEndian() {
		t.Skip("big-endian host: ring refuses to run here")
	}
	buf := make([]byte, 8)
	if !Aligned4(buf) {
		t.Skip("allocator returned an unaligned slice")
	}
	Store32(buf, 4, 0x0002_0001)
	if f, i := binary.LittleEndian.Uint16(buf[4:]), binary.LittleEndian.Uint16(buf[6:]); f != 1 || i != 2 {
		t.Fatalf("flags, idx = %d, %d; want 1, 2", f, i)
	}
	if got := Load32(buf, 4); got != 0x0002_0001 {
		t.Fatalf("Load32 = %#x", got)
	}
	if Aligned4(buf[1:]) || Aligned4(nil) {
		t.Fatal("misaligned or empty slice reported aligned")
	}
}

func TestOutOfRangeOffsetPanicsBeforeTheCast(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("Load32 past the end did not panic with a bounds error")
		}
	}()
	Load32(make([]byte, 6), 4)
}

func TestWordSharesMemoryAndChecksBoundsAndAlignment(t *testing.T) {
	buf := make([]byte, 12)
	if !Aligned4(buf) {
		t.Skip("allocator returned an unaligned slice")
	}
	w := Word(buf, 8)
	*w = 0x0403_0201
	if got := Load32(buf, 8); got != 0x0403_0201 {
		t.Fatalf("Load32 after a store through Word = %#x", got)
	}
	for _, c := range []struct {
		name string
		b    []byte
		off  int
	}{{"past the end", buf, 9}, {"misaligned", buf, 2}, {"negative", buf, -4}} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("Word %s did not panic", c.name)
				}
			}()
			Word(c.b, c.off)
		}()
	}
}
