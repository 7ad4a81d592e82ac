package qemu

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
)

// BenchmarkKernelVsAgent measures one port with the in-kernel driver, then
// hands the device to vserial-agent in the same boot and measures the same
// port through the agent's socket, once per binding, and reports
// agent/kernel ratios:
//
//	go test -run '^$' -bench KernelVsAgent -benchtime 1x ./tests/qemu/
//
// One sub-benchmark per guest. uio: the plain guest, agent on
// uio_pci_generic (INTx). vfio-type1: the IOMMU guest, agent on VFIO type1
// (MSI-X, IOMMU). noiommu: the no-IOMMU guest, agent on VFIO no-IOMMU
// (MSI-X) and then on uio (INTx), so MSI-X and INTx meet on the same device
// in the same boot.
func BenchmarkKernelVsAgent(b *testing.B) {
	for _, c := range []struct {
		name     string
		opts     Options
		bindings []string
	}{
		{"uio", Options{}, []string{"uio"}},
		{"vfio-type1", Options{IOMMU: true, Modules: []string{"vfio-pci", "vfio_iommu_type1"}}, []string{"vfio"}},
		{"noiommu", Options{NoIOMMUVFIO: true}, []string{"vfio", "uio"}},
	} {
		b.Run(c.name, func(b *testing.B) { benchKernelVsAgent(b, c.opts, c.bindings) })
	}
}

func benchKernelVsAgent(b *testing.B, opts Options, bindings []string) {
	opts.Ports, opts.MaxPorts = []Port{{Name: benchPort}}, 2
	opts.Files = append(opts.Files, BuildAgent(b))
	g := Boot(b, opts)
	dev := kernelPorts(b, g)[benchPort]
	if dev == "" {
		b.Fatalf("port %s not found in the guest", benchPort)
	}
	ctx, cancel := context.WithTimeout(b.Context(), 30*time.Minute)
	defer cancel()
	conn := g.DialPort(b, benchPort)
	kernel, err := MeasurePort(ctx, g, conn, dev, MeasureConfig{})
	if err != nil {
		b.Fatalf("kernel driver: %v", err)
	}
	b.Logf("kernel %s: %s", dev, kernel)

	if _, err := ReleaseKernelDriver(ctx, g); err != nil {
		b.Fatal(err)
	}
	sock := AgentSocket(benchPort)
	var ms []Measurement
	b.ResetTimer()
	for _, bind := range bindings {
		agent, err := StartAgent(ctx, g, "--log-level", "info", "--bind", bind)
		if err != nil {
			b.Fatal(err)
		}
		if err := g.WaitPath(ctx, sock, 30*time.Second); err != nil {
			if agent.Exited() {
				out, err := agent.Wait(ctx)
				b.Fatalf("vserial-agent --bind %s exited: %v\n%s", bind, err, out)
			}
			b.Fatalf("vserial-agent --bind %s is running but published no socket: %v", bind, err)
		}
		var m Measurement
		for range b.N {
			if m, err = MeasurePort(ctx, g, conn, sock, MeasureConfig{}); err != nil {
				b.Fatalf("vserial-agent --bind %s: %v", bind, err)
			}
		}
		if err := agent.Signal(ctx, 15); err != nil {
			b.Error(err)
		}
		out, err := agent.Wait(ctx)
		if err != nil {
			b.Errorf("agent exit: %v\n%s", err, out)
		}
		b.Logf("agent --bind %s (%s) %s: %s", bind, openedAs(out), sock, m)
		ms = append(ms, m)
	}
	b.StopTimer()
	for i, bind := range bindings {
		m := ms[i]
		b.ReportMetric(m.HostToGuest.MBps/kernel.HostToGuest.MBps, "h2g-"+bind+"/kernel")
		b.ReportMetric(m.GuestToHost.MBps/kernel.GuestToHost.MBps, "g2h-"+bind+"/kernel")
		b.ReportMetric(m.RoundTrips.MeanUS/kernel.RoundTrips.MeanUS, "rtt-"+bind+"/kernel")
		b.ReportMetric(m.HostToGuest.MBps, bind+"-h2g-MB/s")
		b.ReportMetric(m.GuestToHost.MBps, bind+"-g2h-MB/s")
		b.ReportMetric(m.RoundTrips.MeanUS, bind+"-rtt-mean-µs")
	}
	b.ReportMetric(kernel.HostToGuest.MBps, "kernel-h2g-MB/s")
	b.ReportMetric(kernel.GuestToHost.MBps, "kernel-g2h-MB/s")
	b.ReportMetric(kernel.RoundTrips.MeanUS, "kernel-rtt-mean-µs")
}

// openedAs picks how the agent opened its function out of its log: the
// VFIO mode and vector count, or uio.
func openedAs(log string) string {
	for line := range strings.Lines(log) {
		if strings.Contains(line, `msg="vfio: opened"`) {
			kv := map[string]string{}
			for _, f := range strings.Fields(line) {
				if k, v, ok := strings.Cut(f, "="); ok {
					kv[k] = v
				}
			}
			return fmt.Sprintf("vfio %s, %s MSI-X vectors", kv["mode"], kv["msix_vectors"])
		}
	}
	return "uio, INTx"
}
