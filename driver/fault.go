package driver

// Device faults: violations that are counted and isolated, faults that reset
// the device (within a budget), and failures that stop it.
//
// A ring protocol violation, a control queue that breaks,
// DEVICE_NEEDS_RESET or a device that drops DRIVER_OK resets the device and
// runs the bring-up again on the same memory: ports that come back with the
// same id and name keep their Port objects (PORT_OPEN(1) is re-sent for
// guest-open ones), others are removed or replaced. Each reset is reported
// on Events as DeviceReset with its cause, before the ports' own events;
// violations the driver isolates without a reset are reported as
// ProtocolViolation (rate-limited like their log lines). Config.MaxResets
// resets per minute are allowed; one more fault fails the device: it is
// reset, every port is removed, and Done closes with Err.

import (
	"errors"
	"fmt"
	"time"

	"github.com/vserial/vserial/ring"
)

// portError wraps a ring violation with the port and queue it hit; a nil
// err means the device returned a buffer on a queue where none was posted.
func portError(s *slot, queue string, err error) error {
	if err == nil {
		err = fmt.Errorf("%w: used buffer on an empty queue", ring.ErrDeviceProtocol)
	}
	return &portFault{id: s.id, queue: queue, err: err}
}

type portFault struct {
	id    uint32
	queue string
	err   error
}

func (e *portFault) Error() string { return fmt.Sprintf("port %d %s: %v", e.id, e.queue, e.err) }

func (e *portFault) Unwrap() error { return e.err }

// violationLocked counts and logs a device protocol violation that does not
// need a reset (the message or the port is isolated instead).
func (d *Device) violationLocked(err error, p *Port) {
	d.stats.Violations++
	if p != nil {
		p.stats.Violations++
	}
	// A hostile device must not flood the log: the first ones are logged,
	// then one in a thousand with the running count.
	if n := d.stats.Violations; n <= 32 || n%1000 == 0 {
		d.log.Warn("virtio-console: device protocol violation", "err", err, "violations", n)
		d.emitDeviceLocked(Event{Port: p, Kind: ProtocolViolation, Err: err, Violations: n})
	}
}

// faultLocked recovers from a device fault by resetting and
// re-initialising the device, within a budget of resets per minute; past
// it, or if re-initialisation keeps failing, the device is failed.
func (d *Device) faultLocked(cause error) {
	if d.broken() || d.recovering {
		return
	}
	d.recovering = true
	defer func() { d.recovering = false }()
	for {
		d.stats.Violations++
		var pf *portFault
		if errors.As(cause, &pf) && pf.id < uint32(len(d.slots)) {
			if s := d.slots[pf.id]; s != nil && s.port != nil {
				s.port.stats.Violations++
			}
		}
		now := time.Now()
		keep := d.resetTimes[:0]
		for _, t := range d.resetTimes {
			if now.Sub(t) < resetWindow {
				keep = append(keep, t)
			}
		}
		d.resetTimes = keep
		if len(d.resetTimes) >= d.maxResets {
			d.fatalLocked(fmt.Errorf("driver: device failed: %d resets within %v, last: %w", len(d.resetTimes), resetWindow, cause))
			return
		}
		d.resetTimes = append(d.resetTimes, now)
		d.stats.Resets++
		d.log.Warn("virtio-console: device fault, resetting", "err", cause, "resets", d.stats.Resets)
		d.emitDeviceLocked(Event{Kind: DeviceReset, Err: cause, Violations: d.stats.Violations})
		d.resetCause = cause
		err := d.bringUpLocked(false)
		if err == nil {
			return
		}
		cause = err
	}
}

// salvageLocked runs right after the reset write, when the device no
// longer touches memory but its rings still hold what it wrote: it takes
// the receive buffers the device filled and marked used on every receive
// queue the fault does not concern, so their bytes reach the reader. QEMU
// keeps filling receive buffers until the reset lands, and throwing those
// away left a stream with a silent 4 KiB gap, or many (the
// reset-during-transfer guest test, 1 round in 10–30). Transmit buffers
// the device used are taken back the same way, so that only those it
// never took count as undelivered (undelivered.go). Nothing is kicked:
// the device is reset.
//
// Then it marks the ports that may have lost host→guest bytes (rxLossLocked).
func (d *Device) salvageLocked(cause error) {
	badRx, badTx := ^uint32(0), ^uint32(0)
	var pf *portFault
	if errors.As(cause, &pf) && pf.queue == "receiveq" {
		badRx = pf.id
	} else if pf != nil && pf.queue == "transmitq" {
		badTx = pf.id
	}
	d.salvaging = true
	defer func() { d.salvaging = false }()
	for _, s := range d.slots {
		if s != nil && s.txBufs != nil && s.id != badTx && s.port != nil && s.port.txInflight > 0 {
			if err := d.reapTxErrLocked(s); err != nil {
				d.log.Debug("virtio-console: transmit salvage after reset", "port", s.id, "err", err)
			}
		}
	}
	now := d.clock()
	for _, s := range d.slots {
		if s == nil || s.rxBufs == nil {
			continue
		}
		broke := s.id == badRx || d.serviceRxLocked(s) != nil
		d.rxLossLocked(s, broke, now)
	}
}

// rxLossWindow is how recently host→guest bytes must have moved on a port
// for a device reset to count as a possible loss (rxLossLocked).
const rxLossWindow = time.Second

// rxLossLocked marks the port of slot s, if a client has it open (or it is
// a console), as having possibly lost host→guest bytes in the reset at
// now: its loop client is told once, after the bytes that arrived before
// the reset (ErrDeviceReset from RecvTo; the agent ends the client with
// the reason; a terminal's blocking Recv carries on). That is the case when
// its own receive queue broke, and when bytes moved on it within
// rxLossWindow before the reset. QEMU reads a port's chardev (4 KiB at a
// time) when its main loop last saw receive buffers available; a read that
// lands after the device marked itself broken (the fault before
// DEVICE_NEEDS_RESET), or after the reset, finds no buffer, and QEMU drops
// those bytes (virtio-serial's write_to_port, whose result chr_read
// ignores). A QEMU trace of the reset soak showed it: right after the
// refused descriptor, one 4 KiB read on each streaming port never reached
// a buffer, and the guest's streams had a 4 KiB gap there. A port whose
// host was quiet for rxLossWindow had no such read pending, and its client
// carries on.
func (d *Device) rxLossLocked(s *slot, broke bool, now time.Time) {
	p := s.port
	if p == nil || p.removed || !(p.guestOpen || p.console) {
		return
	}
	if broke || now.Sub(s.rxMoved) < rxLossWindow {
		if !p.rxLost {
			p.rxKeep = s.fLen
		}
		p.rxLost = true
	}
}

// clock is the driver's time.Now (tests replace it).
func (d *Device) clock() time.Time {
	if d.now != nil {
		return d.now()
	}
	return time.Now()
}

// fatalLocked stops the device for good: it is reset so that it no longer
// touches memory, every port is removed and Done closes with err.
func (d *Device) fatalLocked(err error) {
	if d.broken() {
		return
	}
	d.log.Error("virtio-console: device failed", "err", err)
	if rerr := d.t.Reset(); rerr != nil {
		d.log.Warn("virtio-console: reset failed device", "err", rerr)
	}
	d.failed = true
	d.stopLocked(err)
}

// forgetInFlightLocked is the buffer side of a reset: posted buffers are
// the driver's again, in-flight transmissions are lost.
func (d *Device) forgetInFlightLocked() {
	for _, s := range d.slots {
		if s == nil {
			continue
		}
		if p := s.port; p != nil && !p.removed {
			d.dropInflightLocked(p, "device reset")
		}
		s.posting = false
		for i := range s.rxBufs {
			if s.rxBufs[i].state == rxPosted {
				s.rxBufs[i].state = rxFree
			}
		}
		for h := range s.rxByHead {
			s.rxByHead[h] = -1
		}
		s.gen++
		s.txFree = s.txFree[:0]
		for i := range s.txBufs {
			if !s.txBufs[i].owned {
				s.txFree = append(s.txFree, int32(i))
			}
		}
		for h := range s.txByHead {
			s.txByHead[h] = -1
		}
		s.injectedOut = 0
		if p := s.port; p != nil && !p.removed {
			if p.txInflight > 0 {
				p.txLost = true
			}
			p.txInflight = 0
			if d.multiport {
				p.reannounce = true
				if p.hostConnected {
					p.hostConnected = false
					p.changedLocked()
					d.emitLocked(p, PortChanged)
				}
			}
			p.wakeAll()
		}
	}
	for h := range d.ctrlRxHead {
		d.ctrlRxHead[h] = -1
	}
	d.ctrlTxFree = d.ctrlTxFree[:0]
	for i := len(d.ctrlTxHead) - 1; i >= 0; i-- {
		d.ctrlTxHead[i] = -1
		d.ctrlTxFree = append(d.ctrlTxFree, int32(i))
	}
	d.ctrlQueue = d.ctrlQueue[:0]
}

// ErrDeviceProtocolConsole is matched by violations of the console protocol
// that stop bring-up (max_nr_ports 0, a device refusing DRIVER_OK).
var ErrDeviceProtocolConsole = errors.New("driver: console device protocol violation")

func (d *Device) failStatus() {
	if err := d.t.AddStatus(StatusFailed); err != nil {
		d.log.Warn("virtio-console: set FAILED", "err", err)
	}
}
