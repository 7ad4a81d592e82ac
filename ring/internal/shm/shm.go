package shm

import "encoding/binary"

// LittleEndian reports whether the host stores integers little-endian. The
// atomics above treat a word's low half as the field at the lower address,
// which holds only on little-endian hosts.
func LittleEndian() bool {
	return binary.NativeEndian.Uint16([]byte{1, 0}) == 1
}
