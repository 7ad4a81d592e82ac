package qemu

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestAgentClientSendBuffer runs the agent with --client-send-buffer in a
// guest: while it runs the guest's default socket send buffer is the one
// asked for, a client's new socket gets it, a stream through the port
// stays byte-exact, and the old default is back once the agent has exited.
func TestAgentClientSendBuffer(t *testing.T) {
	t.Parallel()
	const name, size = "org.vserial.sndbuf", "2097152"
	a := bootAgentArgs(t, Options{Ports: []Port{{Name: name, Nr: 1}}}, []string{"--client-send-buffer", "2MiB"}, name)
	g := a.g
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	sysctl := func(key string) string {
		t.Helper()
		out, err := g.Run(ctx, "cat", "/proc/sys/net/core/"+key)
		if err != nil {
			t.Fatalf("reading %s: %v\n%s", key, err, out)
		}
		return strings.TrimSpace(out)
	}
	if got := sysctl("wmem_default"); got != size {
		t.Fatalf("net.core.wmem_default while the agent runs: %s, want %s", got, size)
	}
	out, err := g.Run(ctx, "sndbuf", AgentSocket(name))
	if err != nil || strings.TrimSpace(out) != "sndbuf="+size {
		t.Fatalf("a client's socket: %q, %v; want sndbuf=%s", out, err, size)
	}
	conn := g.DialPort(t, name)
	before := a.listCounters(ctx, t, name)
	if err := both(ctx, t, g, conn, AgentSocket(name), 8<<20, 41); err != nil {
		t.Fatal(err)
	}
	after := a.listCounters(ctx, t, name)
	t.Logf("8 MiB guest→host took %d readv calls of the agent", after["readv"]-before["readv"])

	// The old default is the kernel's: wmem_max starts with the same value
	// and nothing in the guest changes either.
	boot := sysctl("wmem_max")
	stopCtx, stop := context.WithTimeout(ctx, time.Minute)
	defer stop()
	if log, err := a.stop(stopCtx); err != nil {
		t.Fatalf("agent exit: %v\n%s", err, log)
	} else if !strings.Contains(log, "to=2097152") {
		t.Errorf("the agent's log does not say it raised the send buffer:\n%s", log)
	}
	if got := sysctl("wmem_default"); got != boot {
		t.Errorf("net.core.wmem_default after the agent exited: %s, want the boot value %s", got, boot)
	}
}
