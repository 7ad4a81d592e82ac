package driver

// What each control message from the device does (VIRTIO-NOTES §7.4–7.7).
//
// Control messages (control.go, this file) are parsed as untrusted input:
// shorter than 8 bytes, an id ≥ max_nr_ports, an event for a port that does
// not exist, a name that is empty, longer than MaxNameLen, not UTF-8, or
// that contains '/' or NUL or is "." or ".." (names become socket names;
// QEMU's trailing NUL is accepted) are counted as violations and ignored;
// unknown event codes are counted and ignored. Each control receive buffer
// is re-posted right after its message is handled, and replies are sent one
// at a time, after the re-post: QEMU answers PORT_READY with up to three
// messages and drops those that find no buffer, so with one message in
// flight none is lost even with hundreds of ports. PORT_ADD posts the
// port's receive buffers and answers PORT_READY(1) (PORT_READY(0) if its
// buffers cannot be allocated; nothing for ids beyond the cap, which are
// logged); a duplicate is re-acknowledged like Linux does. CONSOLE_PORT is
// answered with PORT_OPEN(1). PORT_NAME is stored once. PORT_OPEN from the
// device sets HostConnected. RESIZE (console ports only) is applied only
// with F_SIZE negotiated, as Linux does, parsed in the order
// Config.ResizeOrder names (sizes above 10000 are violations), and surfaced
// by Port.Size and Changed. Without MULTIPORT the size of port 0 is the
// cols/rows configuration fields (F_SIZE), read at bring-up and on every
// configuration interrupt. QEMU 7.2 offers neither. EmergencyWrite writes
// bytes through the emerg_wr configuration field (EMERG_WRITE): no queue or
// interrupt is involved, so it serves as a last-gasp channel even after
// the device failed. PORT_REMOVE wakes readers and writers with
// ErrPortRemoved, forgets in-flight transmissions and discards unread
// data; the receive buffers stay posted in the still-live queue (they
// belong to the port id, port.go's slot) and serve the id again when it is
// re-plugged.

import "fmt"

// lookupLocked returns the live port with id, counting a violation for an
// id the device never announced.
func (d *Device) lookupLocked(m controlMsg) (*Port, bool) {
	if m.ID >= d.maxNr {
		d.violationLocked(fmt.Errorf("%w: %s for port %d, max_nr_ports is %d", ErrControl, ctrlName(m.Event), m.ID, d.maxNr), nil)
		return nil, false
	}
	if m.ID >= uint32(len(d.slots)) || d.slots[m.ID] == nil {
		return nil, false // a port beyond the cap: ignored, already logged
	}
	p := d.slots[m.ID].port
	if p == nil || p.removed {
		d.violationLocked(fmt.Errorf("%w: %s for port %d, which does not exist", ErrControl, ctrlName(m.Event), m.ID), nil)
		return nil, false
	}
	return p, true
}

// handleControlLocked acts on one control message from the device
// (VIRTIO-NOTES §7.4–7.7).
func (d *Device) handleControlLocked(b []byte) {
	m, err := parseControl(b, d.order)
	if err != nil {
		d.violationLocked(err, nil)
		return
	}
	switch m.Event {
	case ctrlPortAdd:
		d.portAddLocked(m.ID)
	case ctrlPortRemove:
		if p, ok := d.lookupLocked(m); ok {
			d.infoLocked("virtio-console: port removed", "port", p.id, "name", p.name)
			d.removePortLocked(p.s)
		}
	case ctrlConsolePort:
		p, ok := d.lookupLocked(m)
		if !ok || m.Value == 0 { // Linux ignores CONSOLE_PORT(0)
			return
		}
		if !p.console {
			p.console = true
			p.changedLocked()
			d.emitLocked(p, PortChanged)
			wake(p.txWake)
		}
		// Spec 5.3.6.2: answer CONSOLE_PORT with PORT_OPEN(1).
		if !p.guestOpen {
			p.guestOpen = true
			d.sendControlLocked(p.id, ctrlPortOpen, 1)
		}
	case ctrlPortOpen:
		p, ok := d.lookupLocked(m)
		if !ok {
			return
		}
		if c := m.Value != 0; c != p.hostConnected {
			p.hostConnected = c
			d.infoLocked("virtio-console: host connection", "port", p.id, "name", p.name, "connected", c)
			p.changedLocked()
			d.emitLocked(p, PortChanged)
			wake(p.txWake)
		}
	case ctrlPortName:
		p, ok := d.lookupLocked(m)
		if !ok {
			return
		}
		d.portNameLocked(p, m.Payload)
	case ctrlResize:
		p, ok := d.lookupLocked(m)
		if !ok {
			return
		}
		if !p.console {
			d.violationLocked(fmt.Errorf("%w: RESIZE for port %d, which is not a console", ErrControl, p.id), p)
			return
		}
		if !d.sizeF {
			// Linux resizes only with F_SIZE negotiated (resize_console).
			d.log.Debug("virtio-console: RESIZE without F_SIZE ignored", "port", p.id)
			return
		}
		cols, rows, err := parseResize(m.Payload, d.order, d.cfg.ResizeOrder)
		if err != nil {
			d.violationLocked(fmt.Errorf("port %d: %w", p.id, err), p)
			return
		}
		d.setSizeLocked(p, cols, rows)
	default:
		// Unknown codes, and driver→device codes coming back: ignored.
		d.stats.UnknownControl++
		d.log.Debug("virtio-console: ignored control message", "code", ctrlName(m.Event), "port", m.ID)
	}
}

// portAddLocked handles PORT_ADD (VIRTIO-NOTES §7.5 step 5).
func (d *Device) portAddLocked(id uint32) {
	if id >= d.maxNr {
		// Linux warns and ignores: no PORT_READY.
		d.violationLocked(fmt.Errorf("%w: PORT_ADD for port %d, max_nr_ports is %d", ErrControl, id, d.maxNr), nil)
		return
	}
	if id >= uint32(len(d.slots)) || d.slots[id] == nil {
		d.stats.IgnoredPorts++
		d.infoLocked("virtio-console: port beyond the configured cap ignored", "port", id, "cap", d.nslots)
		return
	}
	s := d.slots[id]
	if p := s.port; p != nil && !p.removed {
		if !p.reannounce {
			// The spec forbids it; Linux re-acknowledges.
			d.violationLocked(fmt.Errorf("%w: duplicate PORT_ADD for port %d", ErrControl, id), p)
			d.sendControlLocked(id, ctrlPortReady, 1)
			return
		}
		// Back after a device reset.
		p.reannounce = false
		p.nameCheck = true
		s.posting = true
		d.postRxLocked(s)
		d.kickRxLocked(s)
		d.sendControlLocked(id, ctrlPortReady, 1)
		if p.guestOpen {
			d.sendControlLocked(id, ctrlPortOpen, 1)
		}
		p.wakeAll()
		return
	}
	if err := d.ensureRxLocked(s); err != nil {
		d.log.Warn("virtio-console: port setup failed", "port", id, "err", err)
		d.sendControlLocked(id, ctrlPortReady, 0)
		return
	}
	s.posting = true
	d.postRxLocked(s)
	d.kickRxLocked(s)
	p := newPort(d, s)
	s.port = p
	s.gen++
	d.infoLocked("virtio-console: port added", "port", id)
	d.emitLocked(p, PortAdded)
	d.sendControlLocked(id, ctrlPortReady, 1)
}

// portNameLocked handles PORT_NAME: the name is stored once per port.
func (d *Device) portNameLocked(p *Port, payload []byte) {
	name, err := parsePortName(payload)
	if err != nil {
		d.violationLocked(fmt.Errorf("port %d: %w", p.id, err), p)
		p.nameCheck = false
		return
	}
	if p.nameCheck {
		p.nameCheck = false
		if p.name != "" && p.name != name {
			// A different port came back under this id after a reset.
			d.infoLocked("virtio-console: port renamed across reset", "port", p.id, "was", p.name, "name", name)
			s, wasOpen := p.s, p.guestOpen
			d.removePortLocked(s)
			if wasOpen {
				d.sendControlLocked(s.id, ctrlPortOpen, 0)
			}
			np := newPort(d, s)
			np.name = name
			s.port = np
			s.gen++
			d.emitLocked(np, PortAdded)
			return
		}
	}
	if p.name != "" {
		return // stored once (Linux)
	}
	p.name = name
	d.infoLocked("virtio-console: port named", "port", p.id, "name", name)
	p.changedLocked()
	d.emitLocked(p, PortChanged)
}

// removePortLocked detaches the slot's port: waiters wake with
// ErrPortRemoved, in-flight transmissions are forgotten, unread data is
// discarded; the receive buffers stay posted in the live queue.
func (d *Device) removePortLocked(s *slot) {
	p := s.port
	if p == nil {
		return
	}
	p.discardRxLocked()
	d.dropInflightLocked(p, "port removed")
	p.removed = true
	p.hostConnected = false
	p.txInflight = 0
	s.gen++
	s.port = nil
	p.changedLocked()
	p.wakeAll()
	d.emitLocked(p, PortRemoved)
}
