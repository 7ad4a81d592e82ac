package supervisor

import (
	"context"

	"github.com/vserial/vserial/agent"
	"github.com/vserial/vserial/internal/devopen"
	"github.com/vserial/vserial/internal/guard"
	"github.com/vserial/vserial/internal/hotplug"
	"github.com/vserial/vserial/pciscan"
)

// The hot-plug of whole functions (Config.WaitDevices): the supervisor is
// the hotplug.Owner of the functions it drives.

var _ hotplug.Owner = (*Supervisor)(nil)

// watchHotplug starts following the kernel's uevents.
func (s *Supervisor) watchHotplug() error {
	ev, err := s.hooks.Uevents()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(s.ctx)
	s.hpDone = make(chan struct{})
	go func() {
		defer guard.Recover()
		defer close(s.hpDone)
		defer cancel()
		if err := hotplug.Run(ctx, ev, hotplug.Config{Sysfs: s.cfg.Sysfs, Log: s.log}, s); err != nil {
			s.log.Warn("hot-plug of functions stopped: kernel uevents failed", "err", err)
		}
	}()
	s.log.Info("waiting for virtio-console functions to appear (--wait-devices)")
	return nil
}

// Held is hotplug.Owner's: the supervisor drives (or is opening) addr.
func (s *Supervisor) Held(addr string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.held[addr] != nil
}

// Eligible is hotplug.Owner's: the start-up rule (devopen.Eligible), and
// never a function given up on until it is removed.
func (s *Supervisor) Eligible(fn pciscan.Function) bool {
	s.mu.Lock()
	gave := s.gaveUp[fn.Addr]
	s.mu.Unlock()
	return !gave && devopen.Eligible(fn, s.cfg.Devices)
}

// Adopt is hotplug.Owner's: fn is opened as the next device index and its
// ports published.
func (s *Supervisor) Adopt(fn pciscan.Function) {
	s.mu.Lock()
	if s.held[fn.Addr] != nil || s.ctx.Err() != nil {
		s.mu.Unlock()
		return
	}
	m := &managed{index: len(s.devs), addr: fn.Addr}
	s.devs = append(s.devs, nil)
	s.held[fn.Addr] = m // held while opening: our own bind uevent must not adopt it twice
	s.mu.Unlock()
	d, err := s.hooks.Open(s.ctx, s.spec(m.index, fn))
	if err != nil {
		s.mu.Lock()
		delete(s.held, fn.Addr)
		s.gaveUp[fn.Addr] = true
		s.mu.Unlock()
		s.log.Error("cannot open the new device", "pci", fn.Addr, "dev", m.index, "err", err)
		s.report(agent.DeviceEvent{Kind: agent.EventDeviceFailed, Device: m.index, Reason: "cannot open " + fn.Addr + ": " + err.Error()})
		return
	}
	s.mu.Lock()
	m.dev = d
	s.mu.Unlock()
	s.add(m, true)
	s.report(agent.DeviceEvent{Kind: agent.EventDeviceAdded, Device: m.index, Reason: "function " + fn.Addr + " appeared"})
	s.publishPresent(m)
	s.feed(m)
}

// Release is hotplug.Owner's: the function at addr is going; its device is
// closed now (its ports and sockets go, a VFIO device fd is closed so the
// kernel's removal completes) and it is not adopted again until removed.
func (s *Supervisor) Release(addr, why string) {
	s.mu.Lock()
	m := s.held[addr]
	if m == nil || m.dev == nil || m.released {
		s.mu.Unlock()
		return
	}
	m.released = true
	delete(s.held, addr)
	s.gaveUp[addr] = true
	s.mu.Unlock()
	s.log.Warn("letting go of the function", "pci", addr, "dev", m.index, "why", why)
	s.report(agent.DeviceEvent{Kind: agent.EventDeviceRemoved, Device: m.index, Reason: why})
	if err := m.dev.Close(); err != nil {
		s.log.Info("closing the device that went away", "pci", addr, "dev", m.index, "err", err)
	}
}

// Gone is hotplug.Owner's: a function plugged at addr later is new.
func (s *Supervisor) Gone(addr string) {
	s.mu.Lock()
	delete(s.gaveUp, addr)
	s.mu.Unlock()
}
