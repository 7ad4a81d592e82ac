package qemu

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vserial/vserial/agent"
)

// TestAgentWaitDevices (uio) and TestAgentWaitDevicesVFIO (VFIO type1):
// whole-function hot-plug and hot-unplug (run --wait-devices). The guest
// boots with no virtio-serial function, only two PCIe root ports; the
// agent starts with nothing to drive and stays up. A virtio-serial-pci
// hot-plugged on a root port (QMP device_add) is adopted from the kernel's
// uevents: its port's socket appears and carries data both ways. A second
// function on the other root port becomes device 1. device_del of the
// first completes (under VFIO only because the agent answers the kernel's
// request interrupt and closes the device), its socket goes, and the
// second keeps serving; the event stream says device_added twice and
// device_removed once. SIGTERM then ends the agent cleanly.
func TestAgentWaitDevices(t *testing.T) {
	t.Parallel()
	testWaitDevices(t, Options{}, "", nil)
}

func TestAgentWaitDevicesVFIO(t *testing.T) {
	t.Parallel()
	testWaitDevices(t, Options{IOMMU: true, Modules: []string{"vfio-pci", "vfio_iommu_type1"}},
		"iommu_platform=on,disable-legacy=on", []string{"--bind", "vfio"})
}

func testWaitDevices(t *testing.T, opts Options, props string, args []string) {
	opts.NoDevice = true
	opts.ExtraArgs = append(opts.ExtraArgs, RootPortArgs(2)...)
	opts.Files = append(opts.Files, BuildAgent(t))
	g := Boot(t, opts)
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	a := &runningAgent{g: g, args: append([]string{"--wait-devices"}, args...)}
	p, err := a.start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	a.proc = p
	t.Cleanup(func() {
		if !a.stopd {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_ = p.Signal(ctx, 15)
			out, _ := p.Wait(ctx)
			if t.Failed() {
				t.Logf("agent log:\n%s", out)
			}
		}
	})
	if err := g.WaitPath(ctx, AgentSocketDir+"/.control", time.Minute); err != nil {
		t.Fatalf("the agent with no function did not come up: %v", err)
	}
	ev, err := g.Start(ctx, AgentPath, "events", "--json")
	if err != nil {
		t.Fatal(err)
	}
	a.waitList(ctx, t, "the event subscriber", func(l agentList) bool { return l.Agent.Subscribers >= 1 })

	first, second := Port{Name: "org.vserial.hot.1", Nr: 1}, Port{Name: "org.vserial.hot.2", Nr: 5}
	t0 := time.Now()
	if _, err := g.HotplugFunction(ctx, "hs1", "rp1", props, first); err != nil {
		t.Fatal(err)
	}
	if err := g.WaitPath(ctx, AgentSocket(first.Name), time.Minute); err != nil {
		t.Fatalf("the hot-plugged function's port was not published: %v", err)
	}
	t.Logf("function hs1 plugged: its port published %v after device_add", time.Since(t0).Round(time.Millisecond))
	c1 := g.DialPort(t, first.Name)
	if err := both(ctx, t, g, c1, AgentSocket(first.Name), 256<<10, 9100); err != nil {
		t.Fatal(err)
	}
	if _, err := g.HotplugFunction(ctx, "hs2", "rp2", props, second); err != nil {
		t.Fatal(err)
	}
	if err := g.WaitPath(ctx, AgentSocket(second.Name), time.Minute); err != nil {
		t.Fatalf("the second function's port was not published: %v", err)
	}
	c2 := g.DialPort(t, second.Name)

	t0 = time.Now()
	if err := g.UnplugFunction(ctx, "hs1"); err != nil {
		t.Fatalf("device_del hs1 did not complete: %v", err)
	}
	t.Logf("function hs1 unplugged: DEVICE_DELETED %v after device_del", time.Since(t0).Round(time.Millisecond))
	if err := waitGone(ctx, g, AgentSocket(first.Name), time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := both(ctx, t, g, c2, AgentSocket(second.Name), 256<<10, 9101); err != nil {
		t.Fatalf("the other function after the unplug: %v", err)
	}

	out, err := a.stop(ctx)
	if err != nil {
		t.Fatalf("agent exit: %v\n%s", err, out)
	}
	evOut, _ := ev.Wait(ctx)
	var added, removed int
	for line := range strings.Lines(evOut) {
		var e agent.Event
		if json.Unmarshal([]byte(line), &e) != nil {
			continue
		}
		switch e.Event {
		case agent.EventDeviceAdded:
			added++
		case agent.EventDeviceRemoved:
			removed++
			t.Logf("device_removed: %s", e.Reason)
		}
	}
	if added != 2 || removed != 1 {
		t.Errorf("event stream: %d device_added, %d device_removed; want 2 and 1\n%s", added, removed, evOut)
	}
}

// waitGone waits until path no longer exists in the guest.
func waitGone(ctx context.Context, g *Guest, path string, timeout time.Duration) error {
	if _, err := g.Run(ctx, "wait-gone", path, strconv.FormatFloat(timeout.Seconds(), 'f', -1, 64)); err != nil {
		return err
	}
	return nil
}
