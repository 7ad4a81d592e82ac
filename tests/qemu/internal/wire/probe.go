package wire

import (
	"fmt"
	"strconv"
	"strings"
)

// ProbeResult is what one step of the guest's semantics probe ("probe
// SOCK OP ARGS...", served by "probe-serve PATH SOCK") saw: the system
// call's return value and errno, the bytes a read returned, the events a
// poll or epoll reported. The probe prints it as one JSON line; the host
// compares two probes (the kernel's port and vserial's node) field by
// field.
type ProbeResult struct {
	Op string `json:"op"`
	// Ret is the system call's return value (-1 on error).
	Ret int64 `json:"ret"`
	// Errno is the error's name (EAGAIN, EBUSY, ...); empty on success.
	Errno string `json:"errno,omitempty"`
	// Data is what a read returned.
	Data string `json:"data,omitempty"`
	// Events are the revents of a poll or the events of an epoll_wait, by
	// name (POLLIN, POLLOUT, ...), in bit order; "0" when there were none.
	Events []string `json:"events,omitempty"`
	// Settled is false when a poll with a wanted state gave up waiting
	// for it (the events are the last ones seen).
	Settled *bool `json:"settled,omitempty"`
	// Millis is how long the step took, for the log; never compared.
	Millis int64 `json:"ms"`
	// Bytes is how many bytes a fill step wrote; never compared (how
	// much a port takes before it pushes back is the transport's).
	Bytes int64 `json:"bytes,omitempty"`
	// Type is fstat's file type (chr, fifo, sock, ...).
	Type string `json:"type,omitempty"`
}

// Outcome renders the compared part of r on one line: the return value
// and errno, the data read, the events and whether a wanted poll state
// came. Two probes behave alike in a step when their outcomes are equal.
func (r ProbeResult) Outcome() string {
	var b strings.Builder
	if r.Errno != "" {
		fmt.Fprintf(&b, "-1 %s", r.Errno)
	} else {
		b.WriteString(strconv.FormatInt(r.Ret, 10))
	}
	if r.Data != "" {
		fmt.Fprintf(&b, " data=%q", r.Data)
	}
	if r.Events != nil {
		b.WriteString(" events=" + strings.Join(r.Events, "|"))
	}
	if r.Settled != nil && !*r.Settled {
		b.WriteString(" (wanted state never came)")
	}
	if r.Type != "" {
		b.WriteString(" type=" + r.Type)
	}
	return b.String()
}
