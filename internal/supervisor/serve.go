package supervisor

import (
	"errors"
	"fmt"

	"github.com/vserial/vserial/agent"
	"github.com/vserial/vserial/internal/guard"
)

// ErrEveryDeviceStopped is Err once every device stopped (without
// Config.WaitDevices).
var ErrEveryDeviceStopped = errors.New("every device stopped")

// serve answers each device that stops until Close; without WaitDevices,
// once none is left, it says so to the host and closes Done.
func (s *Supervisor) serve() {
	defer guard.Recover()
	defer close(s.serveDone)
	for {
		s.mu.Lock()
		running := s.running
		s.mu.Unlock()
		if running == 0 && !s.cfg.WaitDevices {
			s.stop()
			<-s.ctx.Done()
			return
		}
		select {
		case <-s.ctx.Done():
			return
		case m := <-s.stopped:
			s.ended(m)
		}
	}
}

// stop ends serving on its own: every device stopped.
func (s *Supervisor) stop() {
	s.log.Error("every device stopped; exiting")
	for _, m := range s.devices() {
		s.emergency(m, "fatal: every device stopped; exiting")
	}
	s.mu.Lock()
	s.err = ErrEveryDeviceStopped
	s.mu.Unlock()
	close(s.done)
}

// Done is closed when the supervisor stopped serving on its own: every
// device stopped and Config.WaitDevices is not set. Err then says why.
func (s *Supervisor) Done() <-chan struct{} { return s.done }

// Err is ErrEveryDeviceStopped once Done is closed, nil before.
func (s *Supervisor) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// ended answers a device whose Ports closed: released on purpose, or
// failed (reported, and its function not adopted again until removed).
func (s *Supervisor) ended(m *managed) {
	s.mu.Lock()
	s.running--
	released := m.released
	if s.closing {
		s.mu.Unlock()
		return
	}
	if !released {
		s.gaveUp[m.addr] = true
	}
	s.mu.Unlock()
	if released {
		s.log.Info("device let go", "pci", m.addr, "dev", m.index)
		return
	}
	err := m.dev.Err()
	s.log.Error("device stopped", "pci", m.addr, "dev", m.index, "err", err)
	why := "stopped"
	if err != nil {
		why = err.Error()
	}
	s.report(agent.DeviceEvent{Kind: agent.EventDeviceFailed, Device: m.index, Reason: why})
	s.emergency(m, fmt.Sprintf("fatal: device %s stopped: %v", m.addr, err))
}

// devices returns the devices opened and not let go, by index.
func (s *Supervisor) devices() []*managed {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*managed
	for _, m := range s.devs {
		if m != nil && m.dev != nil && !m.released {
			out = append(out, m)
		}
	}
	return out
}

// Close closes every Held, stops the hot-plug watcher, closes the socket
// side (clients see end of file), then every device (the host sees the
// ports closed; the functions go back), and waits for its goroutines. It
// returns the first error of closing a device. It is idempotent.
func (s *Supervisor) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		close(s.changed) // waiting Takes return ErrClosed
		s.changed = make(chan struct{})
		var helds []*Held
		for h := range s.helds {
			helds = append(helds, h)
		}
		s.mu.Unlock()
		for _, h := range helds {
			h.Close()
		}
		s.closeErr = s.shutdown()
	})
	return s.closeErr
}

// shutdown is Close after the Helds, and Open's undo.
func (s *Supervisor) shutdown() error {
	s.cancel()
	if s.hpDone != nil {
		<-s.hpDone
	}
	if s.serveDone != nil {
		<-s.serveDone
	}
	s.mu.Lock()
	s.closing = true
	s.mu.Unlock()
	if s.a != nil {
		s.a.Close()
		if err := <-s.served; err != nil && !errors.Is(err, agent.ErrClosed) {
			s.log.Warn("control socket", "err", err)
		}
	}
	var first error
	for _, m := range s.devices() {
		if err := m.dev.Close(); err != nil {
			s.log.Error("closing device", "pci", m.addr, "err", err)
			if first == nil {
				first = err
			}
		}
	}
	// Close ends every Ports channel; wait for the feeders.
	for {
		s.mu.Lock()
		running := s.running
		s.mu.Unlock()
		if running == 0 {
			return first
		}
		s.ended(<-s.stopped)
	}
}
