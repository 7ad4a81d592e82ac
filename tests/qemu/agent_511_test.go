package qemu

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/vserial/vserial/agent"
)

// TestAgent511Ports runs the agent on a device with QEMU's largest
// max_ports (511) and every port present (510: id 0 is the console's).
// QEMU cannot announce more cold-plugged ports than the control receive
// queue has buffers (32): it sends every PORT_ADD at once on DEVICE_READY
// and drops those that find no buffer (VIRTIO-NOTES §7.5; the in-kernel
// driver loses them the same way). So the guest boots with 31 ports and
// the other 479 are hot-plugged while the agent runs, one PORT_ADD each,
// 16 at a time (a faster burst loses PORT_ADDs the same way: 77 of 479
// when all were plugged back to back).
//
// First an agent with the default --max-ports 64 serves the 31 and stops;
// then one with --max-ports 511 takes the hot-plugged ports as they come.
// With 510 ports present the receive buffers outrun the default DMA
// budget (docs/memory.md): the agent stays within it (HugetlbPages), says
// so (the `DMA budget` line), and still publishes every port. An event
// subscriber sees every port come and go with nothing dropped (no
// overflow marker), and each run's shutdown time is logged: the removal
// time against the number of ports, a figure, not a bound (beyond a hang
// guard).
func TestAgent511Ports(t *testing.T) {
	t.Parallel()
	const cold, n = 31, 510
	ports := make([]Port, n)
	for i := range ports {
		ports[i] = Port{Name: fmt.Sprintf("org.vserial.p%03d", i+1), Nr: i + 1}
	}
	g := Boot(t, Options{Ports: ports[:cold], MaxPorts: 511, Memory: "1G", Files: []File{BuildAgent(t)}})
	ctx, cancel := context.WithTimeout(t.Context(), 8*time.Minute)
	defer cancel()

	for _, maxPorts := range []int{64, 511} {
		a := &runningAgent{g: g, args: []string{"--max-ports", fmt.Sprint(maxPorts)}}
		p, err := a.start(ctx)
		if err != nil {
			t.Fatal(err)
		}
		a.proc = p
		if err := g.WaitPath(ctx, AgentSocket(ports[cold-1].Name), time.Minute); err != nil {
			_ = p.Signal(ctx, 15)
			out, _ := p.Wait(ctx)
			t.Fatalf("--max-ports %d: cold-plugged ports not published: %v\n%s", maxPorts, err, out)
		}
		ev, err := g.Start(ctx, AgentPath, "events", "--json")
		if err != nil {
			t.Fatal(err)
		}
		a.waitList(ctx, t, "the event subscriber", func(l agentList) bool { return l.Agent.Subscribers >= 1 })
		published := cold
		if maxPorts == 511 {
			// In batches the control receive queue can hold: QEMU drops
			// the PORT_ADD of a hot-plug that finds no buffer as well.
			t0 := time.Now()
			const batch = 16
			for i := cold; i < n; i += batch {
				group := ports[i:min(i+batch, n)]
				for _, hp := range group {
					if _, err := g.HotplugPort(ctx, hp); err != nil {
						t.Fatalf("hot-plug %s: %v", hp.Name, err)
					}
				}
				// The agent takes PORT_ADDs in order: the batch's last
				// port published means the queue has room again (the
				// count below catches a port lost in between).
				last := group[len(group)-1].Name
				if err := g.WaitPath(ctx, AgentSocket(last), time.Minute); err != nil {
					t.Fatalf("hot-plugged %s was not published: %v", last, err)
				}
			}
			published = n
			t.Logf("%d ports hot-plugged and published in %v", n-cold, time.Since(t0).Round(time.Millisecond))
		}
		l, _, err := a.list(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(l.Agent.Ports) != published {
			t.Errorf("--max-ports %d: %d ports listed, want %d", maxPorts, len(l.Agent.Ports), published)
		}
		huge, err := procStatusKiB(ctx, g, p.Pid, "HugetlbPages")
		if err != nil {
			t.Fatal(err)
		}
		const budgetKiB = 133 << 10
		if huge > budgetKiB+hugepageKiB {
			t.Errorf("--max-ports %d: the agent maps %d KiB of hugepages, over the default DMA budget (%d KiB)", maxPorts, huge, budgetKiB)
		}
		t0 := time.Now()
		out, err := a.stop(ctx)
		took := time.Since(t0)
		if err != nil {
			t.Fatalf("--max-ports %d: exit after SIGTERM: %v\n%s", maxPorts, err, out)
		}
		if took > 2*time.Minute {
			t.Errorf("--max-ports %d: shutdown took %v", maxPorts, took)
		}
		evOut, _ := ev.Wait(ctx)
		var added, removed, overflow, limited int
		for line := range strings.Lines(evOut) {
			var e agent.Event
			if json.Unmarshal([]byte(line), &e) != nil {
				continue
			}
			switch e.Event {
			case agent.EventPortAdded:
				added++
			case agent.EventPortRemoved:
				removed++
			case agent.EventOverflow:
				overflow++
			}
		}
		for line := range strings.Lines(out) {
			if strings.Contains(line, "DMA budget") {
				limited++
				t.Logf("--max-ports %d: %s", maxPorts, strings.TrimSpace(line))
			}
		}
		t.Logf("--max-ports %d: %d ports, %d KiB of hugepages, shutdown (SIGTERM to exit) %v; the subscriber saw %d port_added, %d port_removed",
			maxPorts, published, huge, took.Round(time.Millisecond), added, removed)
		if removed != published || added != published-cold || overflow != 0 {
			t.Errorf("--max-ports %d: the subscriber saw %d port_added (want %d), %d port_removed (want %d), %d overflow markers",
				maxPorts, added, published-cold, removed, published, overflow)
		}
		if maxPorts == 511 && limited == 0 {
			t.Errorf("510 ports under the default budget: no `DMA budget` line in the log")
		}
	}
}
