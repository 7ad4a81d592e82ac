package vserial

import (
	"net"
	"time"

	"github.com/vserial/vserial/internal/supervisor"
)

// Addr is a port's address: the name Dial was given.
type Addr string

// Network is "vserial".
func (Addr) Network() string { return "vserial" }

func (a Addr) String() string { return string(a) }

// conn is a port held in-process: a net.Conn over the data plane's
// in-process endpoint (pump.Endpoint). Read copies host bytes straight out
// of the device's receive buffers and Write straight into its transmit
// buffers, each in the caller's goroutine.
type conn struct {
	h    *supervisor.Held
	addr Addr
}

// Read reads host bytes; it waits while there are none (also while the
// host side is away).
func (c *conn) Read(b []byte) (int, error) { return c.h.Read(b) }

// Write queues b for the host and returns once all of it is in the
// device's transmit buffers; while the host side is away it waits.
func (c *conn) Write(b []byte) (int, error) { return c.h.Write(b) }

// Close waits until the device took every byte written (at most until the
// write deadline, or pump.DrainTimeout without one), tells the host
// the port closed (PORT_OPEN 0; host bytes nobody read are discarded and
// counted) and lets go of the port: it may be dialed again, and its
// socket, if it has one, takes clients again.
func (c *conn) Close() error { return c.h.Close() }

func (c *conn) LocalAddr() net.Addr  { return c.addr }
func (c *conn) RemoteAddr() net.Addr { return c.addr }

func (c *conn) SetDeadline(t time.Time) error {
	c.h.SetReadDeadline(t)
	return c.h.SetWriteDeadline(t)
}

func (c *conn) SetReadDeadline(t time.Time) error  { return c.h.SetReadDeadline(t) }
func (c *conn) SetWriteDeadline(t time.Time) error { return c.h.SetWriteDeadline(t) }
