package agent_test

import (
	"io"
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/vserial/vserial/agent"
	"github.com/vserial/vserial/agent/agenttest"
)

// BenchmarkGuestToHost measures the agent's socket → Port.Send path with the
// fake port (no device), 64 KiB client writes.
func BenchmarkGuestToHost(b *testing.B) {
	dir := filepath.Join(b.TempDir(), "run")
	if len(dir) > 80 {
		b.Skip("temp dir path too long for sockets; set TMPDIR to a short path")
	}
	a, err := agent.New(agent.Config{SocketDir: dir, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	defer a.Close()
	p := agenttest.NewPort(1, "bench")
	p.KeepSent(false)
	p.SetBufSize(32 << 10)
	p.SetHostConnected(true)
	if err := a.AddPort(0, p); err != nil {
		b.Fatal(err)
	}
	c := dialB(b, filepath.Join(dir, "bench"))
	defer c.Close()
	chunk := make([]byte, 64<<10)
	b.SetBytes(int64(len(chunk)))
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := c.Write(chunk); err != nil {
			b.Fatal(err)
		}
	}
	want := uint64(b.N) * uint64(len(chunk))
	if _, err := p.Wait(b.Context(), func(s agenttest.State) bool { return s.Stats.BytesOut == want }); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkHostToGuest measures Port.Recv → socket with the fake port.
func BenchmarkHostToGuest(b *testing.B) {
	dir := filepath.Join(b.TempDir(), "run")
	if len(dir) > 80 {
		b.Skip("temp dir path too long for sockets; set TMPDIR to a short path")
	}
	a, err := agent.New(agent.Config{SocketDir: dir, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	defer a.Close()
	p := agenttest.NewPort(1, "bench")
	p.SetHostConnected(true)
	if err := a.AddPort(0, p); err != nil {
		b.Fatal(err)
	}
	c := dialB(b, filepath.Join(dir, "bench"))
	defer c.Close()
	if _, err := p.Wait(b.Context(), func(s agenttest.State) bool { return s.GuestOpen }); err != nil {
		b.Fatal(err)
	}
	chunk := make([]byte, 4096)
	buf := make([]byte, 64<<10)
	b.SetBytes(int64(len(chunk)))
	b.ReportAllocs()
	b.ResetTimer()
	go func() {
		for range b.N {
			p.Deliver(chunk)
		}
	}()
	total := b.N * len(chunk)
	for got := 0; got < total; {
		n, err := c.Read(buf)
		if err != nil {
			b.Fatal(err)
		}
		got += n
	}
}
