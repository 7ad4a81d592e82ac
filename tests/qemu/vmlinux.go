package qemu

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os/exec"
)

// The x86 boot protocol header of a bzImage (Linux Documentation/arch/x86/
// boot.rst): setup_sects at 0x1f1, the "HdrS" magic at 0x202, and since
// protocol 2.08 payload_offset/payload_length at 0x248/0x24c, relative to
// the start of the protected-mode code, which follows the (setup_sects+1)
// 512-byte setup sectors.
const (
	hdrSetupSects    = 0x1f1
	hdrMagic         = 0x202
	hdrVersion       = 0x206
	hdrPayloadOffset = 0x248
	hdrPayloadLength = 0x24c
)

var elfMagic = []byte{0x7f, 'E', 'L', 'F'}

// ExtractVmlinux returns the uncompressed ELF kernel inside a bzImage
// (vmlinuz). QEMU boots it through its PVH entry point, which spares the
// guest the decompression (seconds under TCG). gzip is decompressed here,
// xz and zstd with the external xz and zstd tools.
func ExtractVmlinux(bz []byte) ([]byte, error) {
	payload, err := bzPayload(bz)
	if err != nil {
		return nil, err
	}
	// The build appends the uncompressed size as a little-endian uint32
	// (scripts/Makefile.lib size_append) after the compressed stream.
	if len(payload) < 8 {
		return nil, errors.New("vmlinux: payload too short")
	}
	want := binary.LittleEndian.Uint32(payload[len(payload)-4:])
	stream := payload[:len(payload)-4]
	var out []byte
	switch {
	case bytes.HasPrefix(stream, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(bytes.NewReader(stream))
		if err != nil {
			return nil, fmt.Errorf("vmlinux: gzip: %w", err)
		}
		zr.Multistream(false)
		if out, err = io.ReadAll(zr); err != nil {
			return nil, fmt.Errorf("vmlinux: gzip: %w", err)
		}
	case bytes.HasPrefix(stream, []byte{0xfd, '7', 'z', 'X', 'Z', 0}):
		out, err = decompressWith(stream, "xz", "-dc", "--single-stream")
	case bytes.HasPrefix(stream, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		out, err = decompressWith(stream, "zstd", "-dcq")
	default:
		n := min(len(stream), 8)
		return nil, fmt.Errorf("vmlinux: unsupported payload compression (magic % x)", stream[:n])
	}
	if err != nil {
		return nil, err
	}
	if uint32(len(out)) != want {
		return nil, fmt.Errorf("vmlinux: decompressed %d bytes, header says %d", len(out), want)
	}
	if !bytes.HasPrefix(out, elfMagic) {
		return nil, errors.New("vmlinux: payload is not an ELF image")
	}
	return out, nil
}

func bzPayload(bz []byte) ([]byte, error) {
	if len(bz) < hdrPayloadLength+4 || string(bz[hdrMagic:hdrMagic+4]) != "HdrS" {
		return nil, errors.New("vmlinux: not a bzImage (no HdrS header)")
	}
	if v := binary.LittleEndian.Uint16(bz[hdrVersion:]); v < 0x0208 {
		return nil, fmt.Errorf("vmlinux: boot protocol %#x has no payload fields (need 2.08)", v)
	}
	setup := int(bz[hdrSetupSects])
	if setup == 0 {
		setup = 4
	}
	pm := (setup + 1) * 512
	off := int(binary.LittleEndian.Uint32(bz[hdrPayloadOffset:]))
	n := int(binary.LittleEndian.Uint32(bz[hdrPayloadLength:]))
	start := pm + off
	if off < 0 || n <= 0 || start < pm || start+n > len(bz) || start+n < start {
		return nil, fmt.Errorf("vmlinux: payload [%d,+%d) outside the %d-byte image", start, n, len(bz))
	}
	return bz[start : start+n], nil
}

func decompressWith(data []byte, tool string, args ...string) ([]byte, error) {
	cmd := exec.Command(tool, args...)
	cmd.Stdin = bytes.NewReader(data)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("vmlinux: %s: %w: %s", tool, err, bytes.TrimSpace(stderr.Bytes()))
	}
	return out, nil
}
