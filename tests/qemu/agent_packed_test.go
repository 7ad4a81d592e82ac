package qemu

import (
	"context"
	"encoding/json"
	"net"
	"strings"
	"testing"
	"time"
)

// TestAgentPacked runs vserial-agent (--ring packed, the faultinject
// build) on a modern device with packed=on under uio: QEMU's own account
// of the negotiated features must hold VIRTIO_F_RING_PACKED, so the checks
// below ran on the packed layout. Then the behaviour checks every binding
// passes (names, 1 B to 8 MiB both ways byte-exact on two ports at once,
// open/close, host reconnect with nothing lost), and a reset recovery: a
// zero-length descriptor QEMU refuses, DEVICE_NEEDS_RESET, the ports back
// and moving bytes again.
func TestAgentPacked(t *testing.T) {
	t.Parallel()
	names := []string{"org.vserial.packed.0", "org.vserial.packed.1"}
	a := bootAgentArgs(t, Options{
		Ports:    []Port{{Name: names[0], Nr: 1}, {Name: names[1], Nr: 2}},
		MaxPorts: 4,
		Packed:   true,
		Files:    []File{BuildFaultAgent(t)},
	}, []string{"--ring", "packed"}, names...)
	g := a.g
	ctx, cancel := context.WithTimeout(t.Context(), 12*time.Minute)
	defer cancel()

	t.Run("qemu-reports-ring-packed", func(t *testing.T) { checkRingPacked(ctx, t, g) })

	conns := map[string]*net.UnixConn{}
	behaviourChecks(t, a, names, conns)

	t.Run("reset-recovery", func(t *testing.T) {
		g.MustRun(t, "touch", FaultFile)
		r, err := injectFault(ctx, g, a.proc, 1, "0 1 zero-length")
		if err != nil {
			t.Fatal(err)
		}
		if r.outcome != "reset" {
			t.Fatalf("injection: outcome %q, want reset (QEMU refuses a zero-length buffer)", r.outcome)
		}
		wctx, c := context.WithTimeout(ctx, 3*time.Minute)
		defer c()
		a.waitList(wctx, t, "both ports back and host-connected", func(l agentList) bool {
			for _, n := range names {
				if p, ok := l.byName(n); !ok || !p.HostConnected {
					return false
				}
			}
			return true
		})
		for i, n := range names {
			if err := both(wctx, t, g, conns[n], AgentSocket(n), 1<<20+int64(i), uint64(900+i)); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// checkRingPacked asks QEMU (x-query-virtio-status) for the features the
// driver accepted on vs0 and fails unless VIRTIO_F_RING_PACKED is among
// them: the proof that a test ran on the packed layout.
func checkRingPacked(ctx context.Context, t *testing.T, g *Guest) {
	t.Helper()
	r, err := g.QMP.Execute(ctx, "x-query-virtio-status", map[string]any{"path": "/machine/peripheral/vs0/virtio-backend"})
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		GuestFeatures json.RawMessage `json:"guest-features"`
		HostFeatures  json.RawMessage `json:"host-features"`
	}
	if err := json.Unmarshal(r, &st); err != nil {
		t.Fatalf("x-query-virtio-status: %v\n%s", err, r)
	}
	t.Logf("guest features: %s", st.GuestFeatures)
	if !strings.Contains(string(st.GuestFeatures), "VIRTIO_F_RING_PACKED") {
		t.Fatalf("the driver did not negotiate VIRTIO_F_RING_PACKED; host offers %s", st.HostFeatures)
	}
}
