package virtiotest

import "sync"

// NullModel is a trivial Model for transport tests: it offers what it is
// told, has the queues and configuration it is given, and records what the
// function asks of it. Set the exported fields before New.
type NullModel struct {
	Type      uint16   // virtio device type; 0 means 3 (console)
	Offered   uint64   // device-specific and ring features
	Mandatory uint64   // features the driver must accept
	Sizes     []uint16 // queue sizes by index (0: absent)
	Cfg       []byte   // device configuration

	mu       sync.Mutex
	bus      Bus
	starts   int
	resets   int
	notified []uint16
}

// DeviceType implements Model.
func (m *NullModel) DeviceType() uint16 {
	if m.Type == 0 {
		return 3
	}
	return m.Type
}

// Features implements Model.
func (m *NullModel) Features() uint64 { return m.Offered }

// MandatoryFeatures implements MandatoryFeatures.
func (m *NullModel) MandatoryFeatures() uint64 { return m.Mandatory }

// ConfigSize implements ConfigSizer.
func (m *NullModel) ConfigSize() int { return len(m.Cfg) }

// QueueMax implements Model.
func (m *NullModel) QueueMax(q uint16) uint16 {
	if int(q) >= len(m.Sizes) {
		return 0
	}
	return m.Sizes[q]
}

// ReadConfig implements Model; bytes beyond Cfg read 0.
func (m *NullModel) ReadConfig(off int, p []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := range p {
		p[i] = 0
		if j := off + i; j >= 0 && j < len(m.Cfg) {
			p[i] = m.Cfg[j]
		}
	}
}

// WriteConfig implements Model; bytes beyond Cfg are dropped.
func (m *NullModel) WriteConfig(off int, p []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, b := range p {
		if j := off + i; j >= 0 && j < len(m.Cfg) {
			m.Cfg[j] = b
		}
	}
}

// SetConfig changes configuration bytes as the device would and signals a
// configuration change.
func (m *NullModel) SetConfig(off int, p []byte) {
	m.WriteConfig(off, p)
	m.mu.Lock()
	b := m.bus
	m.mu.Unlock()
	if b != nil {
		b.ConfigChanged()
	}
}

// Start implements Model.
func (m *NullModel) Start(b Bus) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.bus = b
	m.starts++
}

// Notify implements Model.
func (m *NullModel) Notify(q uint16) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.notified = append(m.notified, q)
}

// Reset implements Model.
func (m *NullModel) Reset() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.bus = nil
	m.resets++
}

// Bus returns the bus given to Start, nil before Start or after Reset.
func (m *NullModel) Bus() Bus {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.bus
}

// Starts counts Start calls.
func (m *NullModel) Starts() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.starts
}

// Resets counts Reset calls.
func (m *NullModel) Resets() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.resets
}

// Notified returns the queues notified, in order.
func (m *NullModel) Notified() []uint16 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]uint16(nil), m.notified...)
}
