package driver

// Port announcements after DEVICE_READY: how long bring-up waits for the
// host to name its ports, and dropping ports the device does not announce
// again after a reset.

import "time"

// announceWait bounds how long the first bring-up waits for the device's
// answers to DEVICE_READY. QEMU sends them synchronously only when the
// doorbell is not an ioeventfd; with one (virtio-pci's default) they come
// from its main loop a moment later, and under load after bring-up would
// have returned: the ports present at start (Ports, what the agent
// publishes before it reports ready) would then be none.
const announceWait = time.Second

// announceQuiet is how long the first bring-up keeps listening after the
// device's last control message when a port still has no name (QEMU sends
// a name right after the port's PORT_READY, or never).
const announceQuiet = 200 * time.Millisecond

// awaitAnnouncementsLocked takes the device's answers to DEVICE_READY
// (control messages beyond the count before, taken before it was sent)
// until some came and either every port announced has its name or the
// device has been quiet for announceQuiet; with no answer at all (a device
// with no port) it waits for timeout, once, at Open. It gives up the lock
// while it sleeps.
func (d *Device) awaitAnnouncementsLocked(before uint64, timeout time.Duration) (more bool, err error) {
	deadline := time.Now().Add(timeout)
	seen, last := before, time.Now()
	for {
		now := time.Now()
		if d.stats.ControlIn != seen {
			seen, last = d.stats.ControlIn, now
		}
		if seen > before && (d.portsNamedLocked() || now.Sub(last) >= announceQuiet) {
			return false, nil
		}
		if !now.Before(deadline) || d.broken() {
			return false, nil
		}
		d.mu.Unlock()
		time.Sleep(time.Millisecond)
		d.mu.Lock()
		if more, err = d.serviceControlPassesLocked(maxControlPasses); err != nil || more {
			return more, err
		}
	}
}

// portsNamedLocked reports whether every live port has a name.
func (d *Device) portsNamedLocked() bool {
	for _, s := range d.slots {
		if s != nil && s.port != nil && !s.port.removed && s.port.name == "" {
			return false
		}
	}
	return true
}

// reannounceGrace is how long after a reset the driver waits for the device
// to announce a port again before it removes the port. QEMU replays every
// PORT_ADD on DEVICE_READY, but from its main loop when the doorbell goes
// through an ioeventfd (virtio-pci's default), so the replay may arrive
// well after bring-up returns; removing ports at once would replace every
// port (and drop its client) on each reset.
const reannounceGrace = 2 * time.Second

// scheduleUnannouncedDropLocked removes, reannounceGrace from now, the
// ports the device has not announced again since this reset.
func (d *Device) scheduleUnannouncedDropLocked() {
	if d.reannounceTimer != nil {
		d.reannounceTimer.Stop()
		d.reannounceTimer = nil
	}
	pending := false
	for _, s := range d.slots {
		if s != nil && s.port != nil && !s.port.removed && s.port.reannounce {
			pending = true
			break
		}
	}
	if !pending {
		return
	}
	resets := d.stats.Resets
	d.reannounceTimer = time.AfterFunc(reannounceGrace, func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		if d.broken() || d.stats.Resets != resets {
			return // stopped, or a later reset has its own timer
		}
		d.reannounceTimer = nil
		d.dropUnannouncedLocked()
	})
}

// dropUnannouncedLocked removes ports the device did not announce again
// after a reset (QEMU replays PORT_ADD synchronously on DEVICE_READY).
func (d *Device) dropUnannouncedLocked() {
	for _, s := range d.slots {
		if s != nil && s.port != nil && !s.port.removed && s.port.reannounce {
			d.infoLocked("virtio-console: port not re-announced after reset", "port", s.id)
			d.removePortLocked(s)
		}
	}
}
