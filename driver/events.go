package driver

// The events the driver reports (Events) and their queue: port events are
// coalesced per port, PortAdded and PortRemoved are never dropped, and an
// external loop is woken for each.

import (
	"fmt"

	"github.com/vserial/vserial/internal/guard"
)

// EventKind says what happened: to a port (PortAdded, PortRemoved,
// PortChanged) or to the whole device (the other kinds).
type EventKind uint8

const (
	PortAdded   EventKind = iota + 1 // the device announced the port (PORT_ADD)
	PortRemoved                      // unplugged, or gone with the device
	PortChanged                      // name, host connection, console state or size

	// Device-level kinds: Err says what happened, Violations is the
	// device's count of protocol violations so far.

	// DeviceReset: the driver reset the device to recover from Err (a
	// ring violation, a broken control queue, DEVICE_NEEDS_RESET...). Port
	// is nil. The ports' own events follow as the device re-announces them.
	DeviceReset
	// ProtocolViolation: the device broke the protocol and the driver
	// ignored the message or isolated the port instead of resetting. Port
	// is the port concerned, or nil. Rate-limited like the log: the first
	// 32 of a device, then one in 1000.
	ProtocolViolation
	// DeviceLimited: the device asked for more than the DMA budget allows
	// (Config.DMABudget): Err says what the driver did instead (ports
	// capped, reduced buffer sets, a port refused). Port is the port
	// concerned, or nil. Once per device and kind of limit.
	DeviceLimited
)

func (k EventKind) String() string {
	switch k {
	case PortAdded:
		return "added"
	case PortRemoved:
		return "removed"
	case PortChanged:
		return "changed"
	case DeviceReset:
		return "reset"
	case ProtocolViolation:
		return "violation"
	case DeviceLimited:
		return "limited"
	}
	return fmt.Sprintf("EventKind(%d)", uint8(k))
}

// Event is what the driver reports to its owner on Events: a change of a
// port, or something that happened to the device (DeviceReset,
// ProtocolViolation, DeviceLimited). It is not a control message (the
// device's PORT_ADD, RESIZE...; control.go) nor a line of the agent's
// event stream, though it often causes both.
type Event struct {
	Port       *Port
	Kind       EventKind
	Err        error  // device-level kinds: the fault or violation
	Violations uint64 // device-level kinds: DeviceStats.Violations then
}

// maxEventBacklog bounds the port events waiting for a reader.
const maxEventBacklog = 1 << 14

// wakeLoopLocked tells an external loop that something changed.
func (d *Device) wakeLoopLocked() {
	if d.waker != nil {
		d.waker()
	}
}

// emitLocked queues a port event for Events.
func (d *Device) emitLocked(p *Port, k EventKind) {
	switch {
	case k == PortChanged && p.changeQueued:
		// One change per port waits at a time: it says "look again", and
		// a device toggling a port in a loop cannot grow the queue.
		d.wakeLoopLocked()
		return
	case k == PortChanged && len(d.evq) >= maxEventBacklog:
		d.stats.Dropped++
		d.wakeLoopLocked()
		return
	}
	// PortAdded and PortRemoved are never dropped: a port the agent never
	// heard of would never be published. Their number is bounded by the
	// ports' slots between two reads of the queue.
	if k == PortChanged {
		p.changeQueued = true
	}
	d.evq = append(d.evq, Event{Port: p, Kind: k})
	wake(d.evWake)
	d.wakeLoopLocked()
}

// forward delivers queued port events to Events in order, and closes it
// when the device stops.
func (d *Device) forward() {
	defer guard.Recover()
	defer close(d.fwdDone)
	defer close(d.events)
	var batch []Event
	for {
		d.mu.Lock()
		batch = append(batch[:0], d.evq...)
		for _, ev := range d.evq {
			if ev.Kind == PortChanged {
				ev.Port.changeQueued = false
			}
		}
		clear(d.evq)
		d.evq = d.evq[:0]
		stopped := d.closed || d.failed
		d.mu.Unlock()
		for _, ev := range batch {
			if stopped {
				// Still deliver what is ready if someone reads, but
				// never block a stopped device.
				select {
				case d.events <- ev:
				default:
				}
				continue
			}
			select {
			case d.events <- ev:
			case <-d.done:
				stopped = true
			}
		}
		if stopped {
			return
		}
		select {
		case <-d.evWake:
		case <-d.done:
		}
	}
}

// emitDeviceLocked queues a device-level event for Events, in order with
// the port events around it.
func (d *Device) emitDeviceLocked(ev Event) {
	if len(d.evq) >= maxEventBacklog {
		d.stats.Dropped++
		return
	}
	d.evq = append(d.evq, ev)
	wake(d.evWake)
	d.wakeLoopLocked()
}
