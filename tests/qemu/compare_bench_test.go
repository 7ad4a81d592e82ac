package qemu

import (
	"context"
	"testing"
	"time"
)

// BenchmarkKernelVsAgent measures one port with the in-kernel driver, then
// hands the device to vserial-agent in the same boot and measures the same
// port through the agent's socket, and reports agent/kernel ratios.
//
//	go test -run '^$' -bench KernelVsAgent -benchtime 1x ./tests/qemu/
func BenchmarkKernelVsAgent(b *testing.B) {
	g := Boot(b, Options{Ports: []Port{{Name: benchPort}}, MaxPorts: 2, Files: []File{BuildAgent(b)}})
	dev := kernelPorts(b, g)[benchPort]
	if dev == "" {
		b.Fatalf("port %s not found in the guest", benchPort)
	}
	ctx, cancel := context.WithTimeout(b.Context(), 20*time.Minute)
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
	agent, err := StartAgent(ctx, g, "--log-level", "info")
	if err != nil {
		b.Fatal(err)
	}
	sock := AgentSocket(benchPort)
	if err := g.WaitPath(ctx, sock, 30*time.Second); err != nil {
		if agent.Exited() {
			out, err := agent.Wait(ctx)
			b.Fatalf("vserial-agent exited: %v\n%s", err, out)
		}
		b.Fatalf("vserial-agent is running but published no socket: %v", err)
	}
	var m Measurement
	b.ResetTimer()
	for range b.N {
		if m, err = MeasurePort(ctx, g, conn, sock, MeasureConfig{}); err != nil {
			b.Fatalf("vserial-agent: %v", err)
		}
	}
	b.StopTimer()
	b.Logf("agent %s: %s", sock, m)
	if err := agent.Signal(ctx, 15); err != nil {
		b.Error(err)
	}
	if out, err := agent.Wait(ctx); err != nil {
		b.Errorf("agent exit: %v\n%s", err, out)
	}
	b.ReportMetric(m.HostToGuest.MBps/kernel.HostToGuest.MBps, "h2g-agent/kernel")
	b.ReportMetric(m.GuestToHost.MBps/kernel.GuestToHost.MBps, "g2h-agent/kernel")
	b.ReportMetric(m.RoundTrips.MeanUS/kernel.RoundTrips.MeanUS, "rtt-agent/kernel")
	b.ReportMetric(m.HostToGuest.MBps, "agent-h2g-MB/s")
	b.ReportMetric(m.GuestToHost.MBps, "agent-g2h-MB/s")
	b.ReportMetric(m.RoundTrips.MeanUS, "agent-rtt-mean-µs")
}
