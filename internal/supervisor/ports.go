package supervisor

import "slices"

// PortState is one live port as Ports reports it.
type PortState struct {
	Device        int
	ID            uint32
	Name          string // the host's name, "" if none yet
	HostConnected bool
	Held          bool // taken in-process (Take)
}

// states returns the device's live ports, by id.
func (d *consoleDevice) states(index int) []PortState {
	var out []PortState
	for _, p := range d.od.Dev.Ports() {
		d.mu.Lock()
		sp := d.byPort[p]
		d.mu.Unlock()
		if sp == nil {
			continue // not announced yet: Changed fires when it is
		}
		out = append(out, PortState{Device: index, ID: p.ID(), Name: p.Name(), HostConnected: p.HostConnected(), Held: sp.isHeld()})
	}
	slices.SortFunc(out, func(a, b PortState) int { return int(a.ID) - int(b.ID) })
	return out
}

// Ports returns the live ports of the devices driven now, by device index
// then id (only ports of devices that can be taken: OpenDevice's).
func (s *Supervisor) Ports() []PortState {
	var out []PortState
	for _, m := range s.devices() {
		if d, ok := m.dev.(*consoleDevice); ok {
			out = append(out, d.states(m.index)...)
		}
	}
	return out
}

// Changed returns a channel closed at the next change of what Ports
// reports (a port added, named, removed, its host side connecting or
// leaving, a device opened or stopped), at a Take or a Held's Close, and at
// Close.
func (s *Supervisor) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}
