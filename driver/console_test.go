package driver

import (
	"bytes"
	"testing"

	"github.com/vserial/vserial/driver/virtiotest"
)

func TestEndToEndBringUpNamesAndDataBothWays(t *testing.T) {
	bothRings(t, func(t *testing.T, packed bool) {
		r := newRig(t, rigOpts{packed: packed, plug: plugPorts(
			portSpec{id: 0, name: "console0", console: true},
			portSpec{id: 1, name: "org.qemu.guest_agent.0", host: true},
			portSpec{id: 3, name: "data", host: true},
		)})
		if !r.d.Multiport() {
			t.Fatal("MULTIPORT not negotiated")
		}
		p1 := r.port(1, "org.qemu.guest_agent.0")
		p3 := r.port(3, "data")
		p0 := r.port(0, "console0")
		if !p0.IsConsole() || p1.IsConsole() {
			t.Errorf("console flags: port0 %v port1 %v", p0.IsConsole(), p1.IsConsole())
		}
		if !p1.HostConnected() || !p3.HostConnected() {
			t.Errorf("host connected: p1 %v p3 %v", p1.HostConnected(), p3.HostConnected())
		}
		// The console port is opened by the driver (spec: PORT_OPEN(1) in
		// answer to CONSOLE_PORT).
		r.modelWait("console guest-open", func() bool { return r.m.GuestConnected(0) })
		for _, p := range []*Port{p1, p3} {
			if err := p.SetGuestOpen(r.ctx, true); err != nil {
				t.Fatal(err)
			}
		}
		r.modelWait("ports guest-open", func() bool { return r.m.GuestConnected(1) && r.m.GuestConnected(3) })

		// host → guest
		msg := bytes.Repeat([]byte("host to guest "), 1000) // spans several buffers
		if err := r.m.HostWrite(3, msg); err != nil {
			t.Fatal(err)
		}
		if got := r.recvN(p3, len(msg)); !bytes.Equal(got, msg) {
			t.Fatalf("Recv got %d bytes, want %d (mismatch)", len(got), len(msg))
		}
		// guest → host
		out := bytes.Repeat([]byte("guest to host "), 700)
		if n, err := p1.Write(r.ctx, out); err != nil || n != len(out) {
			t.Fatalf("Write = %d, %v", n, err)
		}
		got, err := r.m.HostReadFull(r.ctx, 1, len(out))
		if err != nil || !bytes.Equal(got, out) {
			t.Fatalf("host read %d bytes, %v", len(got), err)
		}
		st := p1.Stats()
		if st.BytesOut != uint64(len(out)) {
			t.Errorf("BytesOut = %d, want %d", st.BytesOut, len(out))
		}
		if st := p3.Stats(); st.BytesIn != uint64(len(msg)) {
			t.Errorf("BytesIn = %d, want %d", st.BytesIn, len(msg))
		}
		if v := r.d.Stats().Violations; v != 0 {
			t.Errorf("violations = %d on a well-behaved device\n%s", v, r.log)
		}
		_ = virtiotest.CtrlPortAdd
	})
}
