package driver

import (
	"errors"
	"testing"

	"github.com/vserial/vserial/driver/virtiotest"
	"github.com/vserial/vserial/ring"
	"github.com/vserial/vserial/ring/ringtest"
)

// nextEvent returns the next event of kind want from Events, skipping the
// others (port events are covered elsewhere).
func (r *rig) nextEvent(want EventKind) Event {
	r.t.Helper()
	for {
		select {
		case ev, ok := <-r.d.Events():
			if !ok {
				r.t.Fatalf("Events closed while waiting for %v", want)
			}
			if ev.Kind == want {
				return ev
			}
		case <-r.ctx.Done():
			r.t.Fatalf("no %v event\nlog:\n%s", want, r.log)
		}
	}
}

// A ring violation that the driver recovers from by reset is reported on
// Events as DeviceReset, with the cause, before the ports come back.
func TestDeviceResetReportedOnEvents(t *testing.T) {
	r := newRig(t, rigOpts{plug: plugPorts(portSpec{id: 1, name: "p", host: true})})
	p := r.port(1, "p")
	r.until("host connected", p.HostConnected)
	if err := p.SetGuestOpen(r.ctx, true); err != nil {
		t.Fatal(err)
	}
	r.m.MisbehaveRing(virtiotest.RxQueue(1), ringtest.Misbehaviour{BadID: true}, false)
	if err := r.m.HostWrite(1, []byte("x")); err != nil {
		t.Fatal(err)
	}
	ev := r.nextEvent(DeviceReset)
	if ev.Port != nil {
		t.Errorf("DeviceReset with port %d, want none", ev.Port.ID())
	}
	if !errors.Is(ev.Err, ring.ErrDeviceProtocol) {
		t.Errorf("DeviceReset cause %v, want a ring protocol violation", ev.Err)
	}
	if ev.Violations != 1 {
		t.Errorf("DeviceReset violations %d, want 1", ev.Violations)
	}
	r.until("port back", p.settled)
	if got := r.d.Stats().Resets; got != 1 {
		t.Errorf("resets %d, want 1", got)
	}
}

// DEVICE_NEEDS_RESET from the device is reported the same way.
func TestNeedsResetReportedOnEvents(t *testing.T) {
	r := newRig(t, rigOpts{plug: plugPorts(portSpec{id: 1, name: "p"})})
	r.port(1, "p")
	r.m.NeedsReset()
	ev := r.nextEvent(DeviceReset)
	if !errors.Is(ev.Err, ErrDeviceProtocolConsole) {
		t.Errorf("cause %v, want ErrDeviceProtocolConsole", ev.Err)
	}
}

// Violations the driver isolates without a reset are reported as
// ProtocolViolation, with the port when one is concerned, and no more
// often than they are logged.
func TestProtocolViolationReportedOnEvents(t *testing.T) {
	r := newRig(t, rigOpts{plug: plugPorts(portSpec{id: 1, name: "p"})})
	p := r.port(1, "p")

	// An event for a port that does not exist: no port concerned.
	r.m.SendControl(5, virtiotest.CtrlPortOpen, 1, nil)
	ev := r.nextEvent(ProtocolViolation)
	if ev.Port != nil || !errors.Is(ev.Err, ErrControl) || ev.Violations != 1 {
		t.Errorf("violation for a missing port: port %v err %v violations %d", ev.Port, ev.Err, ev.Violations)
	}
	// RESIZE for a port that is not a console: that port.
	r.m.SendControl(1, virtiotest.CtrlResize, 0, []byte{24, 0, 80, 0})
	ev = r.nextEvent(ProtocolViolation)
	if ev.Port != p || ev.Violations != 2 {
		t.Errorf("RESIZE on a plain port: port %v violations %d, want port 1, 2", ev.Port, ev.Violations)
	}
	if r.d.Stats().Resets != 0 {
		t.Error("the driver reset the device for a violation it can isolate")
	}

	// A flood: 32 events in all, like the log lines, and the count goes on.
	// (QEMU, and the model, drop a control message that finds no buffer:
	// one at a time.)
	for i := range uint64(100) {
		r.m.SendControl(5, virtiotest.CtrlPortOpen, 1, nil)
		r.until("violation counted", func() bool { return r.d.Stats().Violations == 3+i })
	}
	r.m.SendControl(1, virtiotest.CtrlPortOpen, 1, nil) // a good one, as a marker
	r.until("marker", p.HostConnected)
	n := 0
	for {
		select {
		case ev := <-r.d.Events():
			if ev.Kind == ProtocolViolation {
				n++
				continue
			}
			if ev.Kind != PortChanged || ev.Port != p {
				continue
			}
		case <-r.ctx.Done():
			t.Fatal("marker event not seen")
		}
		break
	}
	if n != 30 {
		t.Errorf("%d violation events for the flood, want 30 (32 in all, as the log)", n)
	}
}
