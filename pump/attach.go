package pump

import (
	"golang.org/x/sys/unix"

	"github.com/vserial/vserial/internal/rawio"
)

// The control plane's side of the loop: commands queued by Serve, Attach
// and Close (submit, loop.go) reach it through the command eventfd; this
// file attaches and detaches clients and ends them all when the loop stops.

// commands takes the queued commands; it reports a stop.
func (l *Loop) commands() (stop bool) {
	l.stats.cmdWakes.Add(1)
	rawio.EventfdDrain(l.cmdFD)
	l.mu.Lock()
	l.pending = append(l.pending[:0], l.cmds...)
	clear(l.cmds)
	l.cmds = l.cmds[:0]
	l.mu.Unlock()
	for _, cmd := range l.pending {
		switch cmd.kind {
		case cmdAttach:
			l.attach(cmd.c)
		case cmdDetach:
			if !cmd.c.ended {
				l.end(cmd.c, cmd.err)
			}
		case cmdStop:
			stop = true
		}
	}
	clear(l.pending)
	return stop
}

func (l *Loop) attach(c *client) {
	id := c.port.ID()
	if l.byPort[id] != nil {
		c.ended = true
		c.done <- ErrBusy
		return
	}
	l.nextID++
	c.id = l.nextID
	if c.ep != nil {
		l.endpoints++
		l.byPort[id] = c
		l.active = append(l.active, c)
		c.pc.sessions.Add(1)
		close(c.attached)
		return
	}
	// EPOLLOUT only while a write found the client full (watchSpace).
	if err := l.watch(c.fd, unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLET, tagClient, c.id); err != nil {
		c.ended = true
		c.done <- err
		return
	}
	l.clients[c.id] = c
	l.byPort[id] = c
	l.active = append(l.active, c)
	c.pc.sessions.Add(1)
}

// end detaches c and answers its Serve with err.
func (l *Loop) end(c *client, err error) {
	if c.ended {
		return
	}
	c.ended = true
	if c.ep != nil {
		l.endpoints--
	}
	if c.fd >= 0 { // an in-process client has none
		if derr := unix.EpollCtl(l.ep, unix.EPOLL_CTL_DEL, c.fd, nil); derr != nil && derr != unix.EBADF && derr != unix.ENOENT {
			l.log.Warn("pump: epoll del", "port", c.port.ID(), "err", derr)
		}
	}
	delete(l.clients, c.id)
	if l.byPort[c.port.ID()] == c {
		delete(l.byPort, c.port.ID())
	}
	for i, a := range l.active {
		if a == c {
			l.active = append(l.active[:i], l.active[i+1:]...)
			break
		}
	}
	if l.spinOn == c {
		l.spinOn = nil
	}
	l.endRxStream(c)
	c.done <- err
}

func (l *Loop) stopAll(err error) {
	l.mu.Lock()
	l.closed = true
	l.pending = append(l.pending[:0], l.cmds...)
	l.cmds = nil
	l.mu.Unlock()
	for _, cmd := range l.pending {
		if cmd.kind == cmdAttach && !cmd.c.ended {
			cmd.c.ended = true
			cmd.c.done <- err
		}
	}
	for len(l.active) > 0 {
		l.end(l.active[0], err)
	}
}
