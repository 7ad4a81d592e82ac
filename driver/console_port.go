package driver

// Port 0 of a device without MULTIPORT (spec 5.3.5), and console sizes:
// from the configuration space there, from RESIZE messages with MULTIPORT.

import "fmt"

// singlePortLocked sets up port 0 of a device without MULTIPORT: a console
// port, open on both sides, with no control traffic (spec 5.3.5).
func (d *Device) singlePortLocked() error {
	s := d.slots[0]
	if s == nil {
		return fmt.Errorf("%w: port 0 queues", ErrNoQueue)
	}
	if err := d.ensureRxLocked(s); err != nil {
		return err
	}
	s.posting = true
	d.postRxLocked(s)
	d.kickRxLocked(s)
	p := s.port
	if p == nil || p.removed {
		p = newPort(d, s)
		s.port = p
		s.gen++
		d.emitLocked(p, PortAdded)
	}
	p.console, p.hostConnected, p.guestOpen, p.reannounce = true, true, true, false
	if d.sizeF {
		d.configSizeLocked()
	}
	return nil
}

// configSizeLocked reads cols and rows from the configuration space (valid
// with F_SIZE, spec 5.3.4) into port 0 of a device without MULTIPORT, as
// Linux does at a configuration change. With MULTIPORT sizes come in
// RESIZE messages and the fields are ignored.
func (d *Device) configSizeLocked() {
	s := d.slots[0]
	if s == nil || s.port == nil || s.port.removed {
		return
	}
	var b [4]byte
	if err := d.t.ReadConfig(0, b[:]); err != nil {
		d.log.Warn("virtio-console: read console size", "err", err)
		return
	}
	cols, rows := d.order.Uint16(b[0:]), d.order.Uint16(b[2:])
	if cols > maxConsoleDim || rows > maxConsoleDim {
		d.violationLocked(fmt.Errorf("%w: config console size %dx%d", ErrDeviceProtocolConsole, cols, rows), s.port)
		return
	}
	d.setSizeLocked(s.port, cols, rows)
}

// setSizeLocked records a console size and reports the change.
func (d *Device) setSizeLocked(p *Port, cols, rows uint16) {
	if cols == p.cols && rows == p.rows {
		return
	}
	p.cols, p.rows = cols, rows
	d.log.Debug("virtio-console: console size", "port", p.id, "cols", cols, "rows", rows)
	p.changedLocked()
	d.emitLocked(p, PortChanged)
}
