package qemu

import (
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The VFIO guest tests: vserial-agent with --bind vfio and --bind auto in
// the IOMMU guest (VFIO type1, modern device with ACCESS_PLATFORM) and in
// the no-IOMMU guest (vfio no-IOMMU mode) with a transitional and a modern
// device. One boot per QEMU command line; each runs the behaviour checks
// the uio tests run (behaviourChecks), then the binding's own: MSI-X in
// use, list's choice, the function handed back after SIGTERM, --bind auto,
// and the function bindable again by the kernel's virtio-pci.

// vfioCase is one VFIO guest configuration.
type vfioCase struct {
	opts     Options
	deviceID string // PCI device id of the function
	vectors  int    // MSI-X vectors of the device (QEMU's default: 2)
	mode     string // the uio backend's mode in its "vfio: opened" line
	// autoBind and autoDriver are what --bind auto chooses in this guest
	// and the driver the function then has.
	autoBind, autoDriver string
}

var vfioNames = []string{"org.vserial.vfio.0", "org.vserial.vfio.1"}

func vfioPorts() []Port { return []Port{{Name: vfioNames[0]}, {Name: vfioNames[1]}} }

// TestAgentVFIOIOMMU runs the agent over VFIO type1 behind QEMU's emulated
// Intel IOMMU (modern-only device with iommu_platform=on).
func TestAgentVFIOIOMMU(t *testing.T) {
	t.Parallel()
	runVFIOCase(t, vfioCase{
		opts: Options{IOMMU: true, Ports: vfioPorts(), MaxPorts: 4, Modules: []string{"vfio-pci", "vfio_iommu_type1"},
			// Beside the production agent, for the stray-DMA case.
			Files: []File{faultAgentAt(t, faultAgentPath)}},
		deviceID: "0x1043", mode: "type1", vectors: 2,
		autoBind: "vfio", autoDriver: "vfio-pci",
	})
}

// TestAgentVFIOIOMMUPacked is TestAgentVFIOIOMMU on a packed=on device:
// the agent (--ring auto) negotiates the packed ring behind the IOMMU.
func TestAgentVFIOIOMMUPacked(t *testing.T) {
	t.Parallel()
	runVFIOCase(t, vfioCase{
		opts: Options{IOMMU: true, Packed: true, Ports: vfioPorts(), MaxPorts: 4, Modules: []string{"vfio-pci", "vfio_iommu_type1"},
			Files: []File{faultAgentAt(t, faultAgentPath)}},
		deviceID: "0x1043", mode: "type1", vectors: 2,
		autoBind: "vfio", autoDriver: "vfio-pci",
	})
}

// TestAgentVFIONoIOMMU runs the agent over VFIO in no-IOMMU mode, on a
// transitional device (legacy transport; its device configuration moves
// from offset 20 to 24 while MSI-X is on) and on a modern-only one.
func TestAgentVFIONoIOMMU(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name    string
		modern  bool
		id      string
		vectors int
	}{
		{"transitional", false, "0x1003", 2},
		// More vectors than QEMU's default: each port its own.
		{"modern-4-vectors", true, "0x1043", 4},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			props := ""
			if c.vectors != 2 {
				props = ",vectors=" + strconv.Itoa(c.vectors)
			}
			runVFIOCase(t, vfioCase{
				opts:     Options{NoIOMMUVFIO: true, DisableLegacy: c.modern, DeviceProps: props, Ports: vfioPorts(), MaxPorts: 4},
				deviceID: c.id, mode: "noiommu", vectors: c.vectors,
				// A plain guest without an IOMMU: auto takes uio.
				autoBind: "uio", autoDriver: "uio_pci_generic",
			})
		})
	}
}

func runVFIOCase(t *testing.T, c vfioCase) {
	a := bootAgentArgs(t, c.opts, []string{"--bind", "vfio"}, vfioNames...)
	g := a.g
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Minute)
	defer cancel()
	fn := findVirtioConsole(t, g)
	addr := fn[strings.LastIndex(fn, "/")+1:]

	t.Run("bound-to-vfio-pci-with-msix", func(t *testing.T) {
		if id := strings.TrimSpace(g.MustRun(t, "cat", fn+"/device")); id != c.deviceID {
			t.Errorf("device id %s, want %s", id, c.deviceID)
		}
		drv := strings.TrimSpace(g.MustRun(t, "readlink", fn+"/driver"))
		if !strings.HasSuffix(drv, "/vfio-pci") {
			t.Errorf("%s is bound to %q while the agent runs, want vfio-pci", addr, drv)
		}
		group := strings.TrimSpace(g.MustRun(t, "readlink", fn+"/iommu_group"))
		name, _ := g.Run(ctx, "cat", fn+"/iommu_group/name")
		if noiommu := strings.TrimSpace(name) == "vfio-noiommu"; noiommu != (c.mode == "noiommu") {
			t.Errorf("IOMMU group %s is named %q; want a no-IOMMU group: %v", group, strings.TrimSpace(name), c.mode == "noiommu")
		}
		// vfio-pci names each MSI-X vector it routes vfio-msix[N](ADDR).
		irqs := g.MustRun(t, "cat", "/proc/interrupts")
		n := 0
		for line := range strings.Lines(irqs) {
			if strings.Contains(line, "vfio-msix[") && strings.Contains(line, addr) {
				n++
				t.Logf("interrupt: %s", strings.Join(strings.Fields(line), " "))
			}
		}
		if n != c.vectors {
			t.Errorf("%d vfio-msix vectors for %s in /proc/interrupts, want all %d of the device", n, addr, c.vectors)
		}
	})

	if c.opts.Packed {
		t.Run("qemu-reports-ring-packed", func(t *testing.T) { checkRingPacked(ctx, t, g) })
	}

	conns := map[string]*net.UnixConn{}
	moved := behaviourChecks(t, a, vfioNames, conns)

	if c.mode == "type1" {
		t.Run("no-iommu-faults", func(t *testing.T) {
			// Every DMA the device made went to memory the agent mapped:
			// the guest's IOMMU driver logged no fault. (It did, once per
			// run, while ring areas could cross a page: see uio's
			// allocator.)
			out, err := g.Run(ctx, "dmesg")
			if err != nil {
				t.Fatal(err)
			}
			for line := range strings.Lines(out) {
				if strings.Contains(line, "DMAR:") && strings.Contains(line, "fault") {
					t.Errorf("IOMMU fault: %s", strings.TrimSpace(line))
				}
			}
		})
	}

	t.Run("msix-vector-per-port", func(t *testing.T) {
		// The driver's layout: vector 0 for config changes and control,
		// port p's data on 1 + p mod (n-1). After behaviourChecks moved
		// megabytes through ports 1 and 2, their vectors carried the data
		// interrupts. (Few of them: the data-plane loop keeps data
		// interrupts off while it works, spins for replies and takes
		// streams in batches, so megabytes cost tens of interrupts.)
		counts := msixCounts(t, g, addr)
		t.Logf("MSI-X interrupts per vector: %v", counts)
		for _, port := range []int{1, 2} {
			v := 1 + port%(c.vectors-1)
			if counts[v] < 3 {
				t.Errorf("vector %d (port %d's data) delivered %d interrupts, want its port's", v, port, counts[v])
			}
		}
		if c.vectors > 2 && counts[1] > 5 {
			t.Errorf("vector 1 (port 0, which has no traffic) delivered %d interrupts", counts[1])
		}
	})

	t.Run("list-shows-vfio", func(t *testing.T) {
		l, out, err := a.list(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("list --json:\n%s", out)
		if len(l.Functions) != 1 || l.Functions[0].Driver != "vfio-pci" || l.Functions[0].IOMMUGroup == "" {
			t.Fatalf("list functions = %+v, want one bound to vfio-pci in an IOMMU group", l.Functions)
		}
		f := l.Functions[0]
		// While bound, a type1 function is in a real group (auto: vfio); a
		// no-IOMMU one in vfio's made-up group (auto: uio, and says so).
		wantBind, wantReason := "vfio", "IOMMU group "+f.IOMMUGroup
		if c.mode == "noiommu" {
			wantBind, wantReason = "uio", "is vfio no-IOMMU"
		}
		if f.Bind != wantBind || !strings.Contains(f.BindReason, wantReason) {
			t.Errorf("list: bind %q (%q), want %q with %q", f.Bind, f.BindReason, wantBind, wantReason)
		}
		for _, name := range vfioNames {
			p, ok := l.port(AgentSocket(name))
			w := moved[AgentSocket(name)]
			if !ok || p.Name != name || int64(p.BytesIn) != w[0] || int64(p.BytesOut) != w[1] {
				t.Errorf("list port %s: %+v (found %v), want in=%d out=%d", name, p, ok, w[0], w[1])
			}
		}
		text := g.MustRun(t, AgentPath, "list")
		if !strings.Contains(text, f.Bind+" ("+f.BindReason+")") {
			t.Errorf("list (text) does not show %q:\n%s", f.Bind+" ("+f.BindReason+")", text)
		}
	})

	t.Run("sigterm-gives-function-back", func(t *testing.T) {
		out, err := a.stop(ctx)
		if err != nil {
			t.Fatalf("vserial-agent after SIGTERM: %v, want exit 0\n%s", err, out)
		}
		if !strings.Contains(out, `msg="vfio: opened"`) || !strings.Contains(out, "mode="+c.mode) {
			t.Errorf("agent log lacks the vfio open line with mode=%s:\n%s", c.mode, out)
		}
		if drv, err := g.Run(ctx, "readlink", fn+"/driver"); err == nil {
			t.Errorf("after the agent exited %s is still bound to %s; it had no driver before", addr, strings.TrimSpace(drv))
		}
		if c.mode == "noiommu" {
			if grp, err := g.Run(ctx, "readlink", fn+"/iommu_group"); err == nil {
				t.Errorf("the no-IOMMU group %s outlived the vfio-pci binding", strings.TrimSpace(grp))
			}
		}
	})

	t.Run("bind-auto", func(t *testing.T) {
		l, _, err := a.list(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(l.Functions) != 1 || l.Functions[0].Bind != c.autoBind {
			t.Errorf("list before --bind auto: %+v, want bind %s", l.Functions, c.autoBind)
		}
		a.args = []string{"--bind", "auto"}
		p, err := a.start(ctx)
		if err != nil {
			t.Fatal(err)
		}
		a.proc, a.stopd = p, false
		for _, name := range vfioNames {
			if err := g.WaitPath(ctx, AgentSocket(name), 60*time.Second); err != nil {
				t.Fatalf("agent with --bind auto: %v", err)
			}
		}
		drv := strings.TrimSpace(g.MustRun(t, "readlink", fn+"/driver"))
		if !strings.HasSuffix(drv, "/"+c.autoDriver) {
			t.Errorf("with --bind auto %s is bound to %q, want %s", addr, drv, c.autoDriver)
		}
		if err := both(ctx, t, g, conns[vfioNames[0]], AgentSocket(vfioNames[0]), 2<<20, 400); err != nil {
			t.Error(err)
		}
		out, err := a.stop(ctx)
		if err != nil {
			t.Fatalf("vserial-agent --bind auto after SIGTERM: %v\n%s", err, out)
		}
		if !strings.Contains(out, `msg="bind auto"`) || !strings.Contains(out, "bind="+c.autoBind) {
			t.Errorf("agent log does not show --bind auto choosing %s:\n%s", c.autoBind, out)
		}
	})

	if c.mode == "type1" {
		t.Run("stray-dma-faults-in-the-iommu", func(t *testing.T) {
			checkStrayDMA(ctx, t, g, fn, conns)
		})
	}

	t.Run("bindable-again-by-virtio-pci", func(t *testing.T) {
		// The kernel's own driver takes the function the agent gave back
		// and moves bytes through it.
		// The host side is connected (conns) before the driver comes up,
		// so the port starts host-connected: the kernel's read returns end
		// of file on a port whose host is away.
		g.MustRun(t, "modprobe", "virtio_pci", "virtio_console")
		if drv, err := g.Run(ctx, "readlink", fn+"/driver"); err != nil || !strings.HasSuffix(strings.TrimSpace(drv), "/virtio-pci") {
			g.MustRun(t, "write", "/sys/bus/pci/drivers_probe", addr)
		}
		dev := waitVport(ctx, t, g, vfioNames[1], true)
		if err := both(ctx, t, g, conns[vfioNames[1]], dev, 64<<10, 500); err != nil {
			t.Errorf("in-kernel driver after the agent: %v", err)
		}
	})
}

// msixCounts returns the interrupts each vfio-msix vector of the function
// at addr delivered, from the guest's /proc/interrupts.
func msixCounts(t *testing.T, g *Guest, addr string) map[int]int {
	t.Helper()
	out := map[int]int{}
	for line := range strings.Lines(g.MustRun(t, "cat", "/proc/interrupts")) {
		f := strings.Fields(line)
		if len(f) < 3 {
			continue
		}
		name := f[len(f)-1]
		rest, ok := strings.CutPrefix(name, "vfio-msix[")
		if !ok || !strings.HasSuffix(name, "]("+addr+")") {
			continue
		}
		v, err1 := strconv.Atoi(rest[:strings.IndexByte(rest, ']')])
		n, err2 := strconv.Atoi(f[1]) // one vCPU: the single count column
		if err1 != nil || err2 != nil {
			t.Fatalf("cannot parse /proc/interrupts line %q", line)
		}
		out[v] = n
	}
	return out
}

// faultAgentPath is where the VFIO IOMMU guest carries the faultinject
// build of the agent, beside the production one at AgentPath.
const faultAgentPath = "/bin/vserial-agent-faultinject"

func faultAgentAt(t *testing.T, dst string) File {
	f := BuildFaultAgent(t)
	f.Dst = dst
	return f
}

// checkStrayDMA has the device DMA where the agent mapped nothing: the
// faultinject agent posts one transmit descriptor at vfio.Function's
// UnmappedIOVA (the guard gap after the agent's DMA memory), then one at
// 16 MiB, guest RAM that a device without an IOMMU reads as it is. The
// IOMMU must stop both: the guest's Intel IOMMU driver logs a read fault
// at exactly that address for the function. QEMU 7.2 does not fail the
// device then: it sends its bounce buffer (4096 bytes that are not guest
// memory) to the host and returns the descriptor as used, which the agent
// logs as an error. The ports go on working.
func checkStrayDMA(ctx context.Context, t *testing.T, g *Guest, fn string, conns map[string]*net.UnixConn) {
	p, err := g.Start(ctx, faultAgentPath, "run", "--socket-dir", AgentSocketDir, "--bind", "vfio", "--log-level", "info")
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			_ = p.Signal(ctx, 9)
			out, _ := p.Wait(ctx)
			t.Logf("faultinject agent log:\n%s", out)
		}
	}()
	for _, name := range vfioNames {
		if err := g.WaitPath(ctx, AgentSocket(name), 60*time.Second); err != nil {
			t.Fatalf("faultinject agent: %v", err)
		}
	}
	host := conns[vfioNames[0]] // port 1's host side
	if err := both(ctx, t, g, host, AgentSocket(vfioNames[0]), 64<<10, 600); err != nil {
		t.Fatal(err)
	}
	g.MustRun(t, "touch", FaultFile)
	for seq, req := range []string{"0 1 address unmapped", "0 1 address 0x1000000"} {
		r, err := injectFault(ctx, g, p, seq+1, req)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: %+v", req, r)
		// The IOMMU fault is the proof that the device did not reach the
		// address; it is logged asynchronously, so poll briefly.
		want := fmt.Sprintf("fault addr %#x", r.addr)
		var fault string
		for deadline := time.Now().Add(10 * time.Second); fault == "" && time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			for line := range strings.Lines(g.MustRun(t, "dmesg")) {
				if strings.Contains(line, "DMAR:") && strings.Contains(line, want) {
					fault = strings.TrimSpace(line)
				}
			}
		}
		if fault == "" {
			t.Errorf("%s: no IOMMU fault logged %q: the device may have reached memory the agent never mapped", req, want)
		} else {
			t.Logf("kernel: %s", fault)
		}
		switch r.outcome {
		case "reset": // a device that fails on the fault
		case "accepted":
			// QEMU 7.2: the bounce buffer went to the host instead.
			_ = host.SetReadDeadline(time.Now().Add(30 * time.Second))
			junk := make([]byte, 4096)
			n, err := io.ReadFull(host, junk)
			_ = host.SetReadDeadline(time.Time{})
			if err != nil {
				t.Fatalf("%s: host read %d of the 4096 bytes QEMU sends for the faulted buffer: %v", req, n, err)
			}
			if err := nothingMore(host, 300*time.Millisecond); err != nil {
				t.Errorf("%s: %v", req, err)
			}
			t.Logf("%s: the host got QEMU's bounce buffer, starting % x", req, junk[:16])
		default:
			t.Errorf("%s: outcome %q, want the device to refuse (reset) or return the faulted descriptor (accepted)", req, r.outcome)
		}
	}
	// The same ports carry data byte-exact after it.
	for i, name := range vfioNames {
		if err := both(ctx, t, g, conns[name], AgentSocket(name), 1<<20+int64(i), uint64(610+i)); err != nil {
			t.Fatalf("after the stray DMA: %v", err)
		}
	}
	stopped = true
	if err := p.Signal(ctx, 15); err != nil {
		t.Fatal(err)
	}
	out, err := p.Wait(ctx)
	if err != nil {
		t.Fatalf("faultinject agent after SIGTERM: %v\n%s", err, out)
	}
	if n := strings.Count(out, "fault injected"); n != 2 {
		t.Errorf("agent log has %d injections, want 2:\n%s", n, out)
	}
	if drv, err := g.Run(ctx, "readlink", fn+"/driver"); err == nil {
		t.Errorf("after the faultinject agent exited the function is bound to %s", strings.TrimSpace(drv))
	}
}
