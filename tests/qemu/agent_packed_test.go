package qemu

import (
	"context"
	"encoding/json"
	"net"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestAgentPacked runs vserial-agent (--ring packed, the faultinject
// build) on a modern device with packed=on under uio: QEMU's own account
// of the negotiated features must hold VIRTIO_F_RING_PACKED, so the checks
// below ran on the packed layout, and VIRTIO_RING_F_INDIRECT_DESC, and
// `list --json` must say ring packed. Then the behaviour checks every
// binding passes (names, 1 B to 8 MiB both ways byte-exact on two ports at once,
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
	t.Run("qemu-reports-indirect-desc", func(t *testing.T) { checkGuestFeature(ctx, t, g, "INDIRECT_DESC") })
	t.Run("list-json-shows-ring-packed", func(t *testing.T) { checkListDevice(ctx, t, a, "packed") })

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
	checkGuestFeature(ctx, t, g, "VIRTIO_F_RING_PACKED")
}

// checkListDevice runs `list --json` and fails unless it shows the one
// device under uio on ring layout ring, with MULTIPORT, EVENT_IDX and
// INDIRECT_DESC (QEMU offers all three) among its negotiated features.
func checkListDevice(ctx context.Context, t *testing.T, a *runningAgent, ring string) {
	t.Helper()
	l, out, err := a.list(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Agent.Devices) != 1 {
		t.Fatalf("list --json devices = %+v, want one\n%s", l.Agent.Devices, out)
	}
	d := l.Agent.Devices[0]
	t.Logf("device: %+v", d)
	if d.Index != 0 || d.Ring != ring || d.Binding != "uio" || len(l.Functions) != 1 || d.Addr != l.Functions[0].Addr {
		t.Errorf("list --json device %+v, want index 0 on %v, binding uio, ring %s", d, l.Functions, ring)
	}
	for _, f := range []string{"multiport", "event_idx", "indirect", "version_1"} {
		if !slices.Contains(d.Flags, f) {
			t.Errorf("list --json device flags %v lack %s", d.Flags, f)
		}
	}
}

// checkGuestFeature asks QEMU (x-query-virtio-status) for the features
// the driver accepted on vs0 and fails unless one of them contains name.
func checkGuestFeature(ctx context.Context, t testing.TB, g *Guest, name string) {
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
	if !strings.Contains(string(st.GuestFeatures), name) {
		t.Fatalf("the driver did not negotiate %s; host offers %s", name, st.HostFeatures)
	}
}
