package driver

// Console multiport control messages (spec 5.3.6.2; VIRTIO-NOTES §7.3, §7.4).

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unicode/utf8"
)

// Control message codes: the values of the "event" field of struct
// virtio_console_control (spec 5.3.6.2; Linux virtio_console.h names). The
// spec calls them events; here they are control messages, so that "event"
// means only what the driver reports on Events (docs/README.md, glossary).
const (
	ctrlDeviceReady = 0 // driver → device
	ctrlPortAdd     = 1 // device → driver (spec: DEVICE_ADD)
	ctrlPortRemove  = 2 // device → driver (spec: DEVICE_REMOVE)
	ctrlPortReady   = 3 // driver → device
	ctrlConsolePort = 4 // device → driver
	ctrlResize      = 5 // device → driver, payload {u16, u16}
	ctrlPortOpen    = 6 // both directions
	ctrlPortName    = 7 // device → driver, payload = name bytes
)

// badPortID is VIRTIO_CONSOLE_BAD_ID, the id Linux puts in DEVICE_READY.
const badPortID = 0xffffffff

// controlHeaderLen is the size of struct virtio_console_control.
const controlHeaderLen = 8

// MaxNameLen bounds a port name. Names become socket file names, so the
// limit is NAME_MAX.
const MaxNameLen = 255

// MaxPorts is the protocol's port limit, the one constant every layer
// uses: the largest max_nr_ports accepted (Linux refuses a device that
// reports more; the driver caps it with a warning). Port ids are below
// max_nr_ports, and the transmitq of port id is queue 2·id+3, a 16-bit
// queue number, so at most MaxPorts-1 ids (0 … 0x7ffe) can have queues.
const MaxPorts = 0x8000

// ErrControl is matched by every malformed control message from the device.
var ErrControl = errors.New("driver: malformed control message")

// controlMsg is a parsed control message. Payload aliases the buffer it was
// parsed from.
type controlMsg struct {
	ID      uint32
	Event   uint16 // the message code (ctrl*): the spec's field name
	Value   uint16
	Payload []byte
}

// parseControl decodes the control message in b, which holds exactly the
// bytes the device reported (already clamped to the buffer posted). order is
// little-endian for modern devices and the guest's native order for legacy
// ones (spec 5.3.6.3).
func parseControl(b []byte, order binary.ByteOrder) (controlMsg, error) {
	if len(b) < controlHeaderLen {
		return controlMsg{}, fmt.Errorf("%w: %d bytes, header needs %d", ErrControl, len(b), controlHeaderLen)
	}
	return controlMsg{
		ID:      order.Uint32(b[0:4]),
		Event:   order.Uint16(b[4:6]),
		Value:   order.Uint16(b[6:8]),
		Payload: b[controlHeaderLen:],
	}, nil
}

// putControl encodes a header-only control message into b[:8].
func putControl(b []byte, order binary.ByteOrder, id uint32, event, value uint16) {
	_ = b[controlHeaderLen-1]
	order.PutUint32(b[0:4], id)
	order.PutUint16(b[4:6], event)
	order.PutUint16(b[6:8], value)
}

// parsePortName validates the payload of PORT_NAME. QEMU appends one NUL
// after the name although the spec says there is none; both forms are
// accepted. The name becomes a socket file name, so it must be non-empty,
// at most MaxNameLen bytes, valid UTF-8, free of '/' and NUL, and neither
// "." nor "..".
func parsePortName(p []byte) (string, error) {
	if n := len(p); n > 0 && p[n-1] == 0 {
		p = p[:n-1]
	}
	switch {
	case len(p) == 0:
		return "", fmt.Errorf("%w: empty port name", ErrControl)
	case len(p) > MaxNameLen:
		return "", fmt.Errorf("%w: port name of %d bytes exceeds %d", ErrControl, len(p), MaxNameLen)
	case !utf8.Valid(p):
		return "", fmt.Errorf("%w: port name is not UTF-8", ErrControl)
	}
	for _, c := range p {
		if c == 0 || c == '/' {
			return "", fmt.Errorf("%w: port name %q contains %q", ErrControl, p, c)
		}
	}
	if s := string(p); s == "." || s == ".." {
		return "", fmt.Errorf("%w: port name %q", ErrControl, s)
	}
	return string(p), nil
}

// ResizeOrder says how the RESIZE payload's two u16 fields are ordered.
// Deployed guests disagree (VIRTIO-NOTES §7.9).
type ResizeOrder uint8

const (
	// ResizeRowsCols is the order Linux used from 2010 on (and again after
	// the v6.17 revert): rows first.
	ResizeRowsCols ResizeOrder = iota
	// ResizeColsRows is the order the spec defines: cols first.
	ResizeColsRows
)

// maxConsoleDim bounds the terminal size accepted from RESIZE.
const maxConsoleDim = 10000

// parseResize decodes the RESIZE payload into cols and rows.
func parseResize(p []byte, order binary.ByteOrder, ro ResizeOrder) (cols, rows uint16, err error) {
	if len(p) < 4 {
		return 0, 0, fmt.Errorf("%w: resize payload of %d bytes, need 4", ErrControl, len(p))
	}
	a, b := order.Uint16(p[0:2]), order.Uint16(p[2:4])
	if ro == ResizeColsRows {
		cols, rows = a, b
	} else {
		rows, cols = a, b
	}
	if cols > maxConsoleDim || rows > maxConsoleDim {
		return 0, 0, fmt.Errorf("%w: resize to %dx%d", ErrControl, cols, rows)
	}
	return cols, rows, nil
}

// ctrlName names a control message code for logs.
func ctrlName(ev uint16) string {
	switch ev {
	case ctrlDeviceReady:
		return "DEVICE_READY"
	case ctrlPortAdd:
		return "PORT_ADD"
	case ctrlPortRemove:
		return "PORT_REMOVE"
	case ctrlPortReady:
		return "PORT_READY"
	case ctrlConsolePort:
		return "CONSOLE_PORT"
	case ctrlResize:
		return "RESIZE"
	case ctrlPortOpen:
		return "PORT_OPEN"
	case ctrlPortName:
		return "PORT_NAME"
	}
	return fmt.Sprintf("event(%d)", ev)
}
