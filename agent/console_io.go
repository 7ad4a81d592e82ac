package agent

// Moving bytes between a console port and its pty master while no socket
// client holds the port: attach, detach, and the two pumps.

import (
	"context"
	"errors"
	"os"
	"sync"
	"time"

	"github.com/vserial/vserial/internal/guard"
)

// attachLocked starts moving bytes between the port and the terminal.
// a.mu is held; the port has no socket client.
func (c *ptyConsole) attachLocked() {
	if c.closed || c.pumpCancel != nil {
		return
	}
	a := c.pt.a
	ctx, cancel := context.WithCancel(c.ctx)
	done := make(chan struct{})
	c.pumpCancel, c.pumpDone = cancel, done
	// No deadline left over from the previous attachment (its setter has
	// finished: detach waited for done).
	c.master.SetDeadline(time.Time{})
	a.wg.Add(1)
	go func() {
		defer guard.Recover()
		defer a.wg.Done()
		defer close(done)
		woke := make(chan struct{})
		go func() {
			defer guard.Recover()
			// Ending ctx wakes whatever master read or write a pump is
			// blocked in.
			<-ctx.Done()
			c.master.SetDeadline(longAgo)
			close(woke)
		}()
		// A console is open already (the driver answers CONSOLE_PORT with
		// PORT_OPEN 1); a port in mode pty is opened by its terminal, and
		// stays open while the terminal exists.
		if err := c.p.SetGuestOpen(ctx, true); err != nil {
			if ctx.Err() == nil {
				c.pt.log.Warn("console: cannot open the port for the terminal", "err", err)
			}
			cancel()
			<-woke
			return
		}
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer guard.Recover()
			defer wg.Done()
			c.hostToTTY(ctx)
		}()
		c.ttyToHost(ctx)
		cancel()
		wg.Wait()
		<-woke
	}()
}

// detach stops the pumps and waits for them (a socket client takes the
// port). Bytes a pump was writing to the terminal when it stopped are
// counted as discarded by the port.
func (pt *port) detachConsole() {
	a := pt.a
	a.mu.Lock()
	c := pt.con
	if c == nil || c.pumpCancel == nil {
		a.mu.Unlock()
		return
	}
	cancel, done := c.pumpCancel, c.pumpDone
	c.pumpCancel, c.pumpDone = nil, nil
	a.mu.Unlock()
	cancel()
	<-done
	pt.log.Info("console terminal detached: a socket client has the port", "pty", c.tty)
}

// attachConsole gives the port back to its terminal when the socket client
// left.
func (pt *port) attachConsole() {
	a := pt.a
	a.mu.Lock()
	defer a.mu.Unlock()
	if c := pt.con; c != nil && !pt.gone && !a.closed && pt.client == nil {
		c.attachLocked()
		pt.log.Info("console terminal attached", "pty", c.tty)
	}
}

// hostToTTY writes host bytes to the master until ctx ends.
func (c *ptyConsole) hostToTTY(ctx context.Context) {
	w := &fileWriter{f: c.master}
	for {
		_, err := c.p.Recv(ctx, w)
		if w.err != nil || err != nil {
			if ctx.Err() == nil && !c.p.Removed() {
				c.pt.log.Warn("console: host→terminal stopped", "pty", c.tty, "err", errors.Join(err, w.err))
			}
			return
		}
	}
}

// ttyToHost sends what programs write on the slave to the host until ctx
// ends. It reads only while the host side is connected, like a session.
func (c *ptyConsole) ttyToHost(ctx context.Context) {
	p := c.p
	raw, err := c.master.SyscallConn()
	if err != nil {
		c.pt.log.Error("console: terminal→host", "err", err)
		return
	}
	r := newGatedReader(p, raw)
	for {
		if !p.HostConnected() {
			ch := p.Changed()
			if !p.HostConnected() {
				select {
				case <-ch:
				case <-ctx.Done():
					return
				}
				continue
			}
		}
		_, err := p.Send(ctx, r)
		switch {
		case err == nil || errors.Is(err, errHostGone):
			continue
		case ctx.Err() != nil || p.Removed():
			return
		}
		c.pt.log.Warn("console: terminal→host stopped", "pty", c.tty, "err", err)
		return
	}
}

// fileWriter writes to the master, remembering the first error.
type fileWriter struct {
	f   *os.File
	err error
}

func (w *fileWriter) Write(b []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	n, err := w.f.Write(b)
	if err != nil {
		w.err = err
	}
	return n, err
}
