package qemu

import (
	"context"
	"net"
	"slices"
	"sync"
	"testing"
	"time"
)

// behaviourSizes are the transfers behaviourChecks makes each way on every
// port: one byte, just over a page, and multi-MiB ones that wrap the rings
// many times.
var behaviourSizes = []int64{1, 4<<10 + 1, 1 << 20, 8 << 20}

// Bytes behaviourChecks moves beyond behaviourSizes: the open/close check
// sends one byte host→guest on the first port, the reconnect check streams
// 1+4 MiB guest→host on the second.
const (
	behaviourOpenCloseIn  = 1
	behaviourReconnectOut = 1<<20 + 4<<20
)

// behaviourChecks runs the checks every binding (uio, VFIO type1, VFIO
// no-IOMMU) must pass, on a running agent that serves names (at least two
// named ports of vs0, each published under its name): socket names, data
// both ways on every port at once, byte-exact, small and multi-MiB; a guest
// client's open and close seen by the host (VSERPORT_CHANGE); and a host
// disconnect and reconnect with nothing lost or duplicated. It returns the
// bytes each port moved (socket → in, out) for counter checks. conns holds
// the host side of each port by name (QEMU's chardev server takes one
// client at a time, so callers keep using these); missing ones are dialed,
// and the reconnect check replaces the second port's.
func behaviourChecks(t *testing.T, a *runningAgent, names []string, conns map[string]*net.UnixConn) map[string][2]int64 {
	t.Helper()
	if len(names) < 2 {
		t.Fatalf("behaviourChecks needs two named ports, got %v", names)
	}
	g := a.g
	moved := map[string][2]int64{}
	for _, n := range names {
		if conns[n] == nil {
			conns[n] = g.DialPort(t, n)
		}
	}
	caseCtx := func(t *testing.T, d time.Duration) context.Context {
		ctx, cancel := context.WithTimeout(t.Context(), d)
		t.Cleanup(cancel)
		return ctx
	}

	t.Run("socket-names", func(t *testing.T) {
		got, err := ls(caseCtx(t, time.Minute), g, AgentSocketDir)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range names {
			if !slices.Contains(got, n) {
				t.Errorf("no socket %s in %s (has %v)", n, AgentSocketDir, got)
			}
		}
	})

	t.Run("data-both-ways", func(t *testing.T) {
		ctx := caseCtx(t, 5*time.Minute)
		var wg sync.WaitGroup
		for i, name := range names {
			sock := AgentSocket(name)
			// One client per port: each transfer's guest client starts
			// once the agent has ended the previous one's session (it
			// turns away a client that comes earlier).
			idle := func() {
				a.waitList(ctx, t, sock+" without a client", func(l agentList) bool {
					p, ok := l.port(sock)
					return ok && !p.ClientConnected
				})
			}
			wg.Go(func() {
				for j, n := range behaviourSizes {
					seed := uint64(300 + 10*i + j)
					idle()
					tr, err := SendToGuest(ctx, g, conns[name], sock, n, seed)
					if err != nil {
						t.Errorf("%s host→guest %d bytes: %v", sock, n, err)
						return
					}
					t.Logf("%s: host→guest %d bytes byte-exact%s", sock, n, speed(n, tr))
					idle()
					if tr, err = ReceiveFromGuest(ctx, g, conns[name], sock, n, seed+1000); err != nil {
						t.Errorf("%s guest→host %d bytes: %v", sock, n, err)
						return
					}
					t.Logf("%s: guest→host %d bytes byte-exact%s", sock, n, speed(n, tr))
				}
			})
		}
		wg.Wait()
		if t.Failed() {
			a.logList(t)
		}
	})
	var sum int64
	for _, n := range behaviourSizes {
		sum += n
	}
	for _, n := range names {
		// Guest→host also carries the sink's ready byte of each
		// host→guest transfer (SendToGuest).
		moved[AgentSocket(n)] = [2]int64{sum, sum + int64(len(behaviourSizes))}
	}

	t.Run("open-close-events", func(t *testing.T) {
		checkPortChangeEvents(caseCtx(t, 2*time.Minute), t, g, conns[names[0]], names[0], AgentSocket(names[0]))
	})
	m := moved[AgentSocket(names[0])]
	moved[AgentSocket(names[0])] = [2]int64{m[0] + behaviourOpenCloseIn, m[1]}

	t.Run("host-reconnect-nothing-lost", func(t *testing.T) {
		checkHostReconnect(caseCtx(t, 3*time.Minute), t, a, conns, names[1], AgentSocket(names[1]))
	})
	// checkHostReconnect's new connection belonged to the case and is
	// closed with it: connect the host again for the caller.
	conns[names[1]] = g.DialPort(t, names[1])
	m = moved[AgentSocket(names[1])]
	moved[AgentSocket(names[1])] = [2]int64{m[0], m[1] + behaviourReconnectOut}
	return moved
}
