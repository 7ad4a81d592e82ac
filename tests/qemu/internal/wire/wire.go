// Package wire is the line protocol between the host-side test harness and
// the guest helper (tests/qemu/guest) over the guest's serial console, plus
// the deterministic byte stream both sides use to check data end to end.
//
// The serial console also carries kernel messages, so every line the helper
// writes carries the marker "@@VS " and the host ignores anything else.
// Payloads are base64 so that no byte of a command or its output can be
// mangled by the tty or confused with a line break.
//
// Host to guest, one line per command:
//
//	C <id> <fg|bg> <base64 of argv joined by NUL>
//
// Guest to host:
//
//	@@VS READY <helper version>
//	@@VS <id> PID <pid>        (once the command runs)
//	@@VS <id> OUT <base64>     (zero or more chunks of combined output)
//	@@VS <id> END <exit code>  (last; -1 when the command could not start)
package wire

import (
	"encoding/base64"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
)

// Marker starts every line the guest helper writes for the host.
const Marker = "@@VS "

// Version is printed with READY; bump it when the protocol changes.
const Version = "1"

// OutChunk is the largest piece of output carried by one OUT line.
const OutChunk = 768

// Command is one request from the host.
type Command struct {
	ID         uint64
	Background bool
	Argv       []string
}

// Encode renders c as one line, newline included.
func (c Command) Encode() string {
	mode := "fg"
	if c.Background {
		mode = "bg"
	}
	payload := base64.StdEncoding.EncodeToString([]byte(strings.Join(c.Argv, "\x00")))
	return fmt.Sprintf("C %d %s %s\n", c.ID, mode, payload)
}

// ErrNotCommand reports a line that is not a protocol command (a human may
// be typing on the console).
var ErrNotCommand = errors.New("wire: not a command line")

// ParseCommand parses a line produced by Encode (with or without the newline
// and any carriage return the tty adds).
func ParseCommand(line string) (Command, error) {
	f := strings.Fields(line)
	if len(f) != 4 || f[0] != "C" {
		return Command{}, ErrNotCommand
	}
	id, err := strconv.ParseUint(f[1], 10, 64)
	if err != nil {
		return Command{}, fmt.Errorf("wire: command id %q: %w", f[1], err)
	}
	var c Command
	c.ID = id
	switch f[2] {
	case "fg":
	case "bg":
		c.Background = true
	default:
		return Command{}, fmt.Errorf("wire: command mode %q", f[2])
	}
	raw, err := base64.StdEncoding.DecodeString(f[3])
	if err != nil {
		return Command{}, fmt.Errorf("wire: command payload: %w", err)
	}
	c.Argv = strings.Split(string(raw), "\x00")
	if len(c.Argv) == 0 || c.Argv[0] == "" {
		return Command{}, errors.New("wire: empty argv")
	}
	return c, nil
}

// Kind is the type of a reply line.
type Kind string

// Reply kinds.
const (
	KindReady Kind = "READY"
	KindPID   Kind = "PID"
	KindOut   Kind = "OUT"
	KindEnd   Kind = "END"
)

// Reply is one decoded guest line.
type Reply struct {
	ID   uint64
	Kind Kind
	// Int is the pid (PID) or the exit code (END).
	Int int
	// Data is the output chunk (OUT) or the helper version (READY).
	Data []byte
}

// Ready renders the line the helper prints once it serves commands.
func Ready() string { return Marker + "READY " + Version + "\n" }

// PID renders a PID reply.
func PID(id uint64, pid int) string { return fmt.Sprintf("%s%d PID %d\n", Marker, id, pid) }

// End renders an END reply.
func End(id uint64, code int) string { return fmt.Sprintf("%s%d END %d\n", Marker, id, code) }

// Out renders output as OUT lines of at most OutChunk bytes each.
func Out(id uint64, data []byte) string {
	var b strings.Builder
	for len(data) > 0 {
		n := min(len(data), OutChunk)
		fmt.Fprintf(&b, "%s%d OUT %s\n", Marker, id, base64.StdEncoding.EncodeToString(data[:n]))
		data = data[n:]
	}
	return b.String()
}

// ParseReply finds a marker anywhere in line (kernel messages may precede it
// on the same line) and decodes what follows. ok is false for lines that
// carry no marker.
func ParseReply(line string) (r Reply, ok bool, err error) {
	i := strings.Index(line, Marker)
	if i < 0 {
		return Reply{}, false, nil
	}
	f := strings.Fields(line[i+len(Marker):])
	if len(f) == 2 && f[0] == string(KindReady) {
		return Reply{Kind: KindReady, Data: []byte(f[1])}, true, nil
	}
	if len(f) != 3 {
		return Reply{}, true, fmt.Errorf("wire: malformed reply %q", line)
	}
	id, err := strconv.ParseUint(f[0], 10, 64)
	if err != nil {
		return Reply{}, true, fmt.Errorf("wire: reply id %q: %w", f[0], err)
	}
	r = Reply{ID: id, Kind: Kind(f[1])}
	switch r.Kind {
	case KindPID, KindEnd:
		r.Int, err = strconv.Atoi(f[2])
	case KindOut:
		r.Data, err = base64.StdEncoding.DecodeString(f[2])
	default:
		err = fmt.Errorf("wire: reply kind %q", f[1])
	}
	if err != nil {
		return Reply{}, true, fmt.Errorf("wire: reply %q: %w", line, err)
	}
	return r, true, nil
}

// BlockSize is the length of the block that benchmark transfers repeat:
// the first BlockSize bytes of Pattern(seed), over and over.
const BlockSize = 64 << 10

// SinkReady is the byte "sink PATH N ready" writes once it has the port
// open, before it reads: a host that waits for it knows its bytes go to
// this client (not to one that is just leaving, whose unread bytes are
// discarded, as Linux discards them on the last close).
const SinkReady byte = 0x06

// Pattern returns a deterministic, incompressible byte stream for seed. The
// host and the guest generate the same stream from the same seed, so either
// side can check what the other sent without shipping a copy.
func Pattern(seed uint64) *rand.ChaCha8 {
	var key [32]byte
	for i := range 8 {
		key[i] = byte(seed >> (8 * i))
	}
	copy(key[8:], "vserial test pattern v1.")
	return rand.NewChaCha8(key)
}

// Mismatch returns the index of the first byte where got differs from want
// (compared over len(got)), or -1: where a checked stream first went wrong.
func Mismatch(got, want []byte) int {
	for i := range got {
		if got[i] != want[i] {
			return i
		}
	}
	return -1
}

// VserialPrefix marks a PATH that the guest's transfer built-ins (sink,
// source, pingpong, echo) open in-process through package vserial
// instead of as a file or socket: "vserial:BIND/ADDR/NAME[/POLL]" takes
// the function at PCI address ADDR with binding BIND (uio, vfio or auto)
// and polling POLL (vserial.Options.Poll; default adaptive), dials port
// NAME, and gives the function back when the built-in closes it. The
// benchmark's G arm (the Go library) uses it.
const VserialPrefix = "vserial:"

// VserialPath is the VserialPrefix path of port name on the function at
// addr; poll "" keeps the default.
func VserialPath(bind, addr, name, poll string) string {
	p := VserialPrefix + bind + "/" + addr + "/" + name
	if poll != "" {
		p += "/" + poll
	}
	return p
}

// ParseVserialPath splits a VserialPath (without its prefix) into its
// parts; ok is false when one of BIND, ADDR or NAME is missing.
func ParseVserialPath(spec string) (bind, addr, name, poll string, ok bool) {
	parts := strings.Split(spec, "/")
	if len(parts) < 3 || len(parts) > 4 || parts[0] == "" || parts[1] == "" || parts[2] == "" {
		return "", "", "", "", false
	}
	if len(parts) == 4 {
		poll = parts[3]
	}
	return parts[0], parts[1], parts[2], poll, true
}
