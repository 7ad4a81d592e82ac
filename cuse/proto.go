package cuse

import (
	"encoding/binary"
	"errors"
)

// Opcodes of the requests this package knows (include/uapi/linux/fuse.h).
const (
	opOpen      = 14
	opRead      = 15
	opWrite     = 16
	opRelease   = 18
	opFsync     = 20
	opFlush     = 25
	opDestroy   = 38
	opInterrupt = 36
	opIoctl     = 39
	opPoll      = 40
	opCUSEInit  = 4096
)

// The FUSE version this package speaks: 7.31 (poll events, write flags);
// the kernel uses the lower of its own and ours, at least 7.11 for CUSE.
const (
	kernelMajor    = 7
	ourMinor       = 31
	minMinor       = 11
	notifyPoll     = 1 // FUSE_NOTIFY_POLL, in the error field of a notification
	pollScheduled  = 1 // FUSE_POLL_SCHEDULE_NOTIFY
	unrestrictedIO = 1 // CUSE_UNRESTRICTED_IOCTL
)

// Sizes of the wire structures.
const (
	inHeaderLen  = 40 // fuse_in_header
	outHeaderLen = 16 // fuse_out_header
	initInLen    = 16 // cuse_init_in
	initOutLen   = 72 // cuse_init_out
	openInLen    = 8  // fuse_open_in
	openOutLen   = 16 // fuse_open_out
	readInLen    = 40 // fuse_read_in
	writeInLen   = 40 // fuse_write_in
	writeOutLen  = 8  // fuse_write_out
	releaseInLen = 24 // fuse_release_in
	interruptLen = 8  // fuse_interrupt_in
	ioctlInLen   = 32 // fuse_ioctl_in
	ioctlOutLen  = 16 // fuse_ioctl_out
	pollInLen    = 24 // fuse_poll_in (events: padding before 7.21)
	pollOutLen   = 8  // fuse_poll_out
	// initInfoMax is CUSE_INIT_INFO_MAX: the device info after
	// cuse_init_out.
	initInfoMax = 4096
)

var le = binary.LittleEndian

// inHeader is fuse_in_header.
type inHeader struct {
	Len    uint32
	Opcode uint32
	Unique uint64
	NodeID uint64
	UID    uint32
	GID    uint32
	PID    uint32
}

var errShort = errors.New("cuse: request shorter than its header")

// parseHeader decodes the header of msg and returns it with the request's
// arguments (msg after the header, cut at the header's length).
func parseHeader(msg []byte) (inHeader, []byte, error) {
	var h inHeader
	if len(msg) < inHeaderLen {
		return h, nil, errShort
	}
	h.Len = le.Uint32(msg[0:])
	h.Opcode = le.Uint32(msg[4:])
	h.Unique = le.Uint64(msg[8:])
	h.NodeID = le.Uint64(msg[16:])
	h.UID = le.Uint32(msg[24:])
	h.GID = le.Uint32(msg[28:])
	h.PID = le.Uint32(msg[32:])
	if h.Len < inHeaderLen || int(h.Len) > len(msg) {
		return h, nil, errors.New("cuse: request length does not match what was read")
	}
	return h, msg[inHeaderLen:h.Len], nil
}

// putOutHeader writes fuse_out_header into b.
func putOutHeader(b []byte, total int, errno int32, unique uint64) {
	le.PutUint32(b[0:], uint32(total))
	le.PutUint32(b[4:], uint32(errno))
	le.PutUint64(b[8:], unique)
}

// initOut encodes cuse_init_out followed by the device info.
func initOut(minor uint32, c *Config) []byte {
	b := make([]byte, initOutLen)
	le.PutUint32(b[0:], kernelMajor)
	le.PutUint32(b[4:], minor)
	le.PutUint32(b[12:], unrestrictedIO)
	le.PutUint32(b[16:], uint32(c.MaxRead))
	le.PutUint32(b[20:], uint32(c.MaxWrite))
	le.PutUint32(b[24:], c.Major)
	le.PutUint32(b[28:], c.Minor)
	b = append(b, "DEVNAME="...)
	b = append(b, c.Name...)
	return append(b, 0)
}

// Request describes the request a Handler method answers.
type Request struct {
	// Unique is the kernel's id of the request.
	Unique uint64
	// PID, UID and GID are the caller's, as the kernel saw them.
	PID, UID, GID uint32
	// FH is the file handle Open returned for the open file (0 in Open).
	FH uint64
	// Flags are the open file's flags (O_NONBLOCK, O_ACCMODE...) where the
	// request carries them (open, read, write, release).
	Flags uint32
	// Offset is the position within the syscall of a read or write piece:
	// non-zero for the second and later pieces of one syscall.
	Offset uint64
}
