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
