package driver

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/vserial/vserial/driver/virtiotest"
)

// An injected fault that the device refuses ends in a reset after which
// the ports are the same objects and carry data again; one the device
// accepts is counted and logged, not taken for a device violation.
func TestInjectedFaultRefusedByDeviceIsRecoveredByReset(t *testing.T) {
	for _, f := range []Fault{FaultZeroLength, FaultAddress} {
		t.Run(f.String(), func(t *testing.T) {
			r := newRig(t, rigOpts{plug: plugPorts(portSpec{id: 1, name: "p", host: true}, portSpec{id: 2, name: "q", host: true})})
			p, q := r.port(1, "p"), r.port(2, "q")
			r.until("host connected", func() bool { return p.HostConnected() && q.HostConnected() })
			for _, x := range []*Port{p, q} {
				if err := x.SetGuestOpen(r.ctx, true); err != nil {
					t.Fatal(err)
				}
			}
			// The fake's memory resolves only live allocations: this
			// address, far above its allocator's range, is never mapped.
			const unmapped = 0x7e00000000
			for round := uint64(1); round <= 3; round++ {
				if err := r.d.InjectFault(1, f, unmapped); err != nil {
					t.Fatal(err)
				}
				r.until("reset", func() bool { return r.d.Stats().Resets == round })
				r.until("ports back", func() bool { return p.settled() && q.settled() })
				if r.d.Port(1) != p || r.d.Port(2) != q {
					t.Fatal("ports replaced although they came back with the same id and name")
				}
				r.until("host connected again", func() bool { return p.HostConnected() && q.HostConnected() })
				r.modelWait("guest open again", func() bool { return r.m.GuestConnected(1) && r.m.GuestConnected(2) })
				if _, err := p.Write(r.ctx, []byte("out")); err != nil {
					t.Fatal(err)
				}
				if got, err := r.m.HostReadFull(r.ctx, 1, 3); err != nil || string(got) != "out" {
					t.Fatalf("round %d: host got %q %v", round, got, err)
				}
				if err := r.m.HostWrite(2, []byte("in")); err != nil {
					t.Fatal(err)
				}
				if got := r.recvN(q, 2); string(got) != "in" {
					t.Fatalf("round %d: guest got %q", round, got)
				}
			}
			st := r.d.Stats()
			if st.Injected != 3 || st.InjectedAccepted != 0 {
				t.Errorf("injected %d, accepted %d; want 3, 0", st.Injected, st.InjectedAccepted)
			}
			if r.m.Stats().DescErrors != 3 {
				t.Errorf("device saw %d descriptor errors, want 3", r.m.Stats().DescErrors)
			}
			if !r.log.Contains("fault injected") || !r.log.Contains("device fault, resetting") {
				t.Errorf("log lacks the injection or the reset:\n%s", r.log)
			}
		})
	}
}

func TestInjectedDescriptorAcceptedIsCountedNotAViolation(t *testing.T) {
	r := newRig(t, rigOpts{plug: plugPorts(portSpec{id: 1, name: "p", host: true})})
	p := r.port(1, "p")
	r.until("host connected", func() bool { return p.HostConnected() })
	if err := p.SetGuestOpen(r.ctx, true); err != nil {
		t.Fatal(err)
	}
	// A live allocation: the fake device can read it, so it uses the
	// descriptor as a lax device without an IOMMU would.
	mem, err := r.fn.DMA().Alloc(4096, 8)
	if err != nil {
		t.Fatal(err)
	}
	defer r.fn.DMA().Free(mem)
	if err := r.d.InjectFault(1, FaultAddress, mem.Addr()); err != nil {
		t.Fatal(err)
	}
	// Transmit interrupts are on for the injected descriptor: the event
	// loop reaps it without any write on the port.
	r.until("accepted counted", func() bool { return r.d.Stats().InjectedAccepted == 1 })
	if st := r.d.Stats(); st.Resets != 0 || st.Violations != 0 {
		t.Errorf("resets %d violations %d after an accepted injection, want 0", st.Resets, st.Violations)
	}
	if !r.log.Contains("instead of refusing it") {
		t.Errorf("no error logged for the accepted descriptor:\n%s", r.log)
	}
}

func TestInjectFaultRejectsBadArguments(t *testing.T) {
	r := newRig(t, rigOpts{plug: plugPorts(portSpec{id: 1, name: "p", host: true})})
	if err := r.d.InjectFault(7, FaultZeroLength, 0); !errors.Is(err, ErrNoSuchPort) {
		t.Errorf("inject on a missing port: %v, want ErrNoSuchPort", err)
	}
	if err := r.d.InjectFault(1, Fault(99), 0); err == nil {
		t.Error("unknown fault accepted")
	}
	if _, err := ParseFault("bogus"); err == nil {
		t.Error("ParseFault accepted bogus")
	}
	for _, f := range []Fault{FaultZeroLength, FaultAddress} {
		if g, err := ParseFault(f.String()); err != nil || g != f {
			t.Errorf("ParseFault(%q) = %v, %v", f, g, err)
		}
	}
}

// Regression (guest test TestAgentRecovery): QEMU answers DEVICE_READY from
// its main loop, after the kick returned, so the replayed PORT_ADDs come
// after bring-up. The driver must wait for them rather than remove every
// port (which replaced each Port and dropped its client on every reset).
func TestResetWithLateReplayKeepsPorts(t *testing.T) {
	r := newRig(t, rigOpts{
		console: virtiotest.ConsoleConfig{ControlDelay: 20 * time.Millisecond},
		plug:    plugPorts(portSpec{id: 1, name: "p", host: true}, portSpec{id: 2, name: "q", host: true}),
	})
	p, q := r.port(1, "p"), r.port(2, "q")
	r.until("host connected", func() bool { return p.HostConnected() && q.HostConnected() })
	if err := q.SetGuestOpen(r.ctx, true); err != nil {
		t.Fatal(err)
	}
	for round := uint64(1); round <= 3; round++ {
		if err := r.d.InjectFault(1, FaultZeroLength, 0); err != nil {
			t.Fatal(err)
		}
		r.until("reset", func() bool { return r.d.Stats().Resets == round })
		r.until("ports back", func() bool { return p.settled() && q.settled() })
		if r.d.Port(1) != p || r.d.Port(2) != q || p.Removed() || q.Removed() {
			t.Fatalf("round %d: ports replaced or removed although the device announced them again", round)
		}
		r.modelWait("guest open again", func() bool { return r.m.GuestConnected(2) })
		if err := r.m.HostWrite(2, []byte("in")); err != nil {
			t.Fatal(err)
		}
		if got := r.recvN(q, 2); string(got) != "in" {
			t.Fatalf("round %d: guest got %q", round, got)
		}
	}
	if r.log.Contains("not re-announced") {
		t.Errorf("a port was declared gone although it came back:\n%s", r.log)
	}
}

// Bytes still in flight when the device is reset are lost (the device may
// or may not have taken them); the next Send says so instead of carrying on
// as if the stream were whole.
func TestSendAfterResetLostBytesReportsErrDeviceReset(t *testing.T) {
	r := newRig(t, rigOpts{plug: plugPorts(portSpec{id: 1, name: "p", host: true}, portSpec{id: 2, name: "q", host: true})})
	p := r.port(1, "p")
	r.until("host connected", func() bool { return p.HostConnected() })
	if err := p.SetGuestOpen(r.ctx, true); err != nil {
		t.Fatal(err)
	}
	// The host does not take the bytes: they stay in the transmitq.
	if err := r.m.SetThrottled(1, true); err != nil {
		t.Fatal(err)
	}
	if n, err := p.Send(r.ctx, strings.NewReader("in flight")); err != nil || n != 9 {
		t.Fatalf("Send = %d, %v", n, err)
	}
	if err := r.d.InjectFault(2, FaultZeroLength, 0); err != nil {
		t.Fatal(err)
	}
	r.until("reset", func() bool { return r.d.Stats().Resets == 1 })
	r.until("port back", p.settled)
	if _, err := p.Send(r.ctx, strings.NewReader("more")); !errors.Is(err, ErrDeviceReset) {
		t.Fatalf("Send after bytes were lost in a reset: %v, want ErrDeviceReset", err)
	}
	// Reported once: the port is usable again.
	if err := r.m.SetThrottled(1, false); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Write(r.ctx, []byte("after")); err != nil {
		t.Fatal(err)
	}
	if got, err := r.m.HostReadFull(r.ctx, 1, 5); err != nil || string(got) != "after" {
		t.Fatalf("host got %q %v", got, err)
	}
}
