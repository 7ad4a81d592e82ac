package pump

import (
	"io"
	"os"

	"golang.org/x/sys/unix"

	"github.com/vserial/vserial/driver"
	"github.com/vserial/vserial/internal/rawio"
)

// client is one attached descriptor: a socket (or any stream descriptor)
// that the loop moves a port's bytes to and from. Everything in it is owned
// by the loop goroutine; only done crosses to Serve.
//
// Readiness is kept here, not asked of the kernel: the descriptor is
// watched edge-triggered, an event sets a flag, and a short read or write
// (the descriptor drained or full) clears it, so the loop never makes a
// system call only to hear EAGAIN.
type client struct {
	loop *Loop
	id   int32
	port *driver.Port
	fd   int
	pc   *portCounters
	done chan error // Serve's answer, buffered
	// ep is set for an in-process client (no descriptor: fd is -1);
	// attached is closed once the loop took it (inproc.go).
	ep       *Endpoint
	attached chan struct{}

	readable, writable bool
	// spaceWatched: EPOLLOUT is in the descriptor's epoll interest, which
	// it is only while a writev found the client's buffer full
	// (watchSpace).
	spaceWatched bool
	hup          bool // the peer hung up (EPOLLRDHUP/HUP)
	peeked       bool // hup looked at while the host is away
	eof          bool // read the end: flushing, then done
	ended        bool
	eofSeen      bool // a read returned 0: the peer's end

	spin spinner
	// rxStream: host→guest bytes stream to this client and go in
	// batches (rxbatch.go); rxSmall counts small writes in a row.
	rxStream bool
	rxSmall  int
	iov      rawio.Iovecs
}

// ReadBuffers is readv(2) into bufs for SendFrom: 0 and no error when the
// descriptor has nothing now, io.EOF at its end.
func (c *client) ReadBuffers(bufs [][]byte) (int, error) {
	c.pc.readv.Add(1)
	n, err := c.vector(unix.SYS_READV, "readv", bufs, &c.readable)
	if n == 0 && err == nil && c.eofSeen {
		c.eofSeen = false
		return 0, io.EOF
	}
	return n, err
}

// WriteBuffers is one writev(2) of bufs for RecvTo: a short count without
// an error when the descriptor is full (the rest stays in the driver until
// the next EPOLLOUT edge).
func (c *client) WriteBuffers(bufs [][]byte) (int, error) {
	c.pc.writev.Add(1)
	return c.vector(unix.SYS_WRITEV, "writev", bufs, &c.writable)
}

// vector makes one readv or writev (nr) and keeps the readiness flag
// ready: cleared when the call moved less than it was offered (the
// descriptor is drained or full: the next edge sets it again) or failed.
// A read of 0 bytes is the end of the stream (eofSeen).
func (c *client) vector(nr uintptr, op string, bufs [][]byte, ready *bool) (int, error) {
	total := 0
	for _, b := range bufs {
		total += len(b)
	}
	for {
		var n int
		var errno unix.Errno
		if nr == unix.SYS_WRITEV {
			// Host→guest only: a bulk writev runs real-time (batch.go).
			c.loop.rtCall(total, func() { n, errno = c.iov.Writev(c.fd, bufs) })
		} else {
			n, errno = c.iov.Readv(c.fd, bufs)
		}
		switch errno {
		case 0:
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			c.stalled(nr, ready)
			return 0, nil
		default:
			*ready = false
			return 0, os.NewSyscallError(op, errno)
		}
		// Short: drained or full, the next edge says when to go on; except
		// that a hang-up already seen brings no further edge, so reads go
		// on until they meet the end.
		if n < total && (nr != unix.SYS_READV || !c.hup) {
			c.stalled(nr, ready)
		}
		if n == 0 && nr == unix.SYS_READV && total > 0 {
			c.eofSeen = true
		}
		return n, nil
	}
}

// stalled records that a readv found the client drained or a writev found
// it full: the next edge says when to go on, and for a full client that
// edge is EPOLLOUT, which is watched only from now (watchSpace).
func (c *client) stalled(nr uintptr, ready *bool) {
	*ready = false
	if nr == unix.SYS_WRITEV {
		c.watchSpace(true)
	}
}

// events records what epoll said about the descriptor.
func (c *client) events(ev uint32) {
	if ev&(unix.EPOLLIN|unix.EPOLLERR) != 0 {
		c.readable = true
	}
	if ev&unix.EPOLLOUT != 0 {
		c.loop.stats.spaceEdges.Add(1)
	}
	if ev&(unix.EPOLLOUT|unix.EPOLLERR) != 0 {
		c.writable = true
		c.watchSpace(false)
	}
	if ev&(unix.EPOLLRDHUP|unix.EPOLLHUP) != 0 {
		c.hup, c.peeked = true, false
		c.readable = true
	}
}

// hungUpEmpty reports whether the peer has closed its end with nothing
// left unread (a peek at the descriptor sees its end at once).
func (c *client) hungUpEmpty() bool {
	var b [1]byte
	n, _, err := unix.Recvfrom(c.fd, b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
	return (err == nil && n == 0) || err == unix.ECONNRESET
}

// watchSpace adds EPOLLOUT to the descriptor's epoll interest (on) or
// drops it. A Unix socket signals write space each time its reader takes
// bytes, so with EPOLLOUT always in the interest the client's every read
// of a reply would wake the loop for nothing; it is watched only while
// the loop has bytes the client's buffer did not take. Adding it re-polls
// the descriptor, so space freed before the call still brings an event.
func (c *client) watchSpace(on bool) {
	if c.spaceWatched == on || c.ended {
		return
	}
	ev := uint32(unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLET)
	if on {
		ev |= unix.EPOLLOUT
	}
	if e := rawio.EpollMod(c.loop.ep, c.fd, ev, tagClient, c.id); e != 0 {
		// Keep what was there; a failed MOD on a live descriptor leaves
		// the old interest, and an ended client is detached anyway.
		c.loop.log.Warn("pump: epoll_ctl MOD of a client failed", "err", e)
		return
	}
	c.spaceWatched = on
}
