package supervisor

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/vserial/vserial/driver"
	"github.com/vserial/vserial/pump"
)

// Errors of Take (package vserial exports them).
var (
	// ErrClosed is returned by Take after Close.
	ErrClosed = errors.New("vserial: closed")
	// ErrPortHeld is returned by Take for a port already held.
	ErrPortHeld = errors.New("vserial: port already held in-process")
)

// closeTimeout bounds telling the host the port closed.
const closeTimeout = 5 * time.Second

// Held is a port taken in-process: the port's one client, an endpoint of
// its device's loop (pump.Endpoint) that the caller reads and writes.
type Held struct {
	*pump.Endpoint
	Port *driver.Port

	sp   *sockPort
	s    *Supervisor
	once sync.Once
	err  error
}

// Close waits until the device took every byte written (pump.Endpoint's
// Close), tells the host the port closed (PORT_OPEN 0; host bytes nobody
// read are discarded and counted) and lets go of the port: it may be taken
// again, and its socket, if it has one, takes clients again.
func (h *Held) Close() error {
	h.once.Do(func() {
		err := h.Endpoint.Close()
		ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
		cerr := h.sp.guestOpen(ctx, false)
		cancel()
		if err == nil && cerr != nil && !errors.Is(cerr, driver.ErrPortRemoved) && !errors.Is(cerr, driver.ErrClosed) {
			err = cerr
		}
		h.sp.release()
		h.s.mu.Lock()
		delete(h.s.helds, h)
		h.s.mu.Unlock()
		h.s.bump()
		h.err = err
	})
	return h.err
}

// Take holds the port called name (the host's name, or vport<D>p<ID>; a
// name two devices share goes to the lower index), waiting until such a
// port exists or ctx ends. A port served as a socket is taken over: its
// client, if any, is disconnected, and the socket refuses clients until
// the Held is closed.
func (s *Supervisor) Take(ctx context.Context, name string) (*Held, error) {
	if name == "" {
		return nil, errors.New("vserial: Dial: empty port name")
	}
	for {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return nil, ErrClosed
		}
		changed := s.changed
		s.mu.Unlock()
		if sp := s.find(name); sp != nil {
			return s.take(ctx, sp, name)
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, fmt.Errorf("vserial: Dial %s: no such port yet: %w", name, ctx.Err())
		}
	}
}

// finder is a device whose ports can be taken (consoleDevice).
type finder interface {
	find(name string) *sockPort
}

// find returns the live port called name, the lowest device index first.
func (s *Supervisor) find(name string) *sockPort {
	for _, m := range s.devices() {
		if f, ok := m.dev.(finder); ok {
			if sp := f.find(name); sp != nil {
				return sp
			}
		}
	}
	return nil
}

// take holds sp for a new Held.
func (s *Supervisor) take(ctx context.Context, sp *sockPort, name string) (*Held, error) {
	if !sp.hold() {
		return nil, fmt.Errorf("vserial: Dial %s: %w", name, ErrPortHeld)
	}
	// A socket client the loop serves on the port ends first.
	sp.takeOver()
	if err := sp.guestOpen(ctx, true); err != nil {
		sp.release()
		return nil, fmt.Errorf("vserial: Dial %s: open the port: %w", name, err)
	}
	e, err := sp.loop.Attach(sp.Port)
	if err != nil {
		sp.guestOpen(context.WithoutCancel(ctx), false)
		sp.release()
		return nil, fmt.Errorf("vserial: Dial %s: %w", name, err)
	}
	h := &Held{Endpoint: e, Port: sp.Port, sp: sp, s: s}
	s.mu.Lock()
	closed := s.closed
	if !closed {
		s.helds[h] = true
	}
	s.mu.Unlock()
	if closed {
		// Close ran meanwhile and did not see this one.
		h.Close()
		return nil, ErrClosed
	}
	s.bump()
	s.log.Info("vserial: port held in-process", "port", name)
	return h, nil
}

// bump wakes every Take waiting for a port, and whoever waits on Changed.
func (s *Supervisor) bump() {
	s.mu.Lock()
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
}
