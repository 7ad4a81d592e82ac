package agent

// Port is what the agent needs from a port. *driver.Port implements it
// through a small adapter in cmd/vserial-agent (driver must not import
// agent, so PortStats is converted there); tests use a fake. The agent
// imports none of driver, ring, uio or dma.

import (
	"context"
	"io"
)

// Port is one virtio-console port as the agent sees it.
type Port interface {
	// ID is the port number on its device.
	ID() uint32
	// Name is the name the host gave the port (PORT_NAME), or "" if none yet.
	Name() string
	// Recv blocks until host→guest bytes are available, then hands them to w
	// straight from device memory (each slice is valid only during its Write
	// call) and returns how many bytes w took. Bytes w did not take are
	// dropped and counted as discarded. Recv returns an error once the
	// port is hot-unplugged (Removed then reports true), and ctx.Err() when
	// ctx ends.
	Recv(ctx context.Context, w io.Writer) (int, error)
	// Send makes one Read call on r into free transmit buffers (waiting for
	// free buffers while none are available) and queues what it read for the
	// device. It returns the bytes read and r's error (io.EOF included). The
	// bytes are the port's responsibility from then on: Flush waits for them.
	Send(ctx context.Context, r io.Reader) (int, error)
	// Flush waits until the device has taken every byte Send queued.
	Flush(ctx context.Context) error
	// SetGuestOpen tells the host that a guest program has the port open
	// (PORT_OPEN 1) or closed it (PORT_OPEN 0). Closing discards received
	// bytes nobody read, as Linux does, and counts them.
	SetGuestOpen(ctx context.Context, open bool) error
	// HostConnected reports whether the host side of the port is connected.
	HostConnected() bool
	// Changed returns a channel that is closed at the next change of
	// HostConnected, of Name, or when the port is removed.
	Changed() <-chan struct{}
	// Removed reports whether the device removed the port.
	Removed() bool
	// Stats returns the port's counters.
	Stats() PortStats
}

// FDServer is implemented by a Port whose bytes a data-plane loop moves
// straight between the device and a client's descriptor. The agent then
// hands each session's socket to ServeFD instead of pumping it through Recv
// and Send.
type FDServer interface {
	// ServeFD serves the client on the non-blocking stream descriptor fd
	// until it is done: io.EOF once the client closed and the device took
	// everything it sent; the error that ended it otherwise (ctx.Err() when
	// ctx ended). It reads from fd only while HostConnected, ends when the
	// client hangs up with nothing unread even while the host is away, and
	// never closes fd.
	ServeFD(ctx context.Context, fd int) error
}

// PortStats are a port's counters.
type PortStats struct {
	BytesIn    uint64 `json:"bytes_in"`   // host → guest, delivered to a client
	BytesOut   uint64 `json:"bytes_out"`  // guest → host, taken by the device
	Discarded  uint64 `json:"discarded"`  // host → guest bytes dropped (no reader, closed)
	Violations uint64 `json:"violations"` // device protocol violations on this port
	// Counters explain the data plane's numbers (system calls, wake-ups,
	// interrupts, kicks, spins), by name; keys starting with "loop_" are
	// the device's and the same for all its ports. Absent without a loop.
	Counters map[string]uint64 `json:"counters,omitempty"`
}
