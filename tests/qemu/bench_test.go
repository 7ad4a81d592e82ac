package qemu

import (
	"context"
	"testing"
	"time"
)

const benchPort = "org.vserial.bench"

// BenchmarkKernelDriver measures the in-kernel virtio_console driver on one
// port of a TCG guest: the baseline vserial is compared with. One boot; each
// iteration is a full MeasurePort.
//
//	go test -run '^$' -bench KernelDriver -benchtime 1x ./tests/qemu/
func BenchmarkKernelDriver(b *testing.B) {
	g := Boot(b, Options{Ports: []Port{{Name: benchPort}}, MaxPorts: 2})
	dev := kernelPorts(b, g)[benchPort]
	if dev == "" {
		b.Fatalf("port %s not found in the guest", benchPort)
	}
	runMeasurement(b, g, dev)
}

// runMeasurement runs MeasurePort b.N times against guestPath (a vport
// device or an agent socket) and reports the last run as metrics.
func runMeasurement(b *testing.B, g *Guest, guestPath string) {
	b.Helper()
	conn := g.DialPort(b, benchPort)
	ctx, cancel := context.WithTimeout(b.Context(), 20*time.Minute)
	defer cancel()
	var m Measurement
	b.ResetTimer()
	for range b.N {
		var err error
		if m, err = MeasurePort(ctx, g, conn, guestPath, MeasureConfig{}); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.Logf("%s: %s", guestPath, m)
	b.ReportMetric(m.HostToGuest.MBps, "h2g-MB/s")
	b.ReportMetric(m.GuestToHost.MBps, "g2h-MB/s")
	b.ReportMetric(m.RoundTrips.MeanUS, "rtt-mean-µs")
	b.ReportMetric(m.RoundTrips.P99US, "rtt-p99-µs")
}
