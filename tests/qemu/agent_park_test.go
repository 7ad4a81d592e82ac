package qemu

import (
	"context"
	"io"
	"strconv"
	"testing"
	"time"
)

// TestAgentLoopLetsSysmonSleep sends a one-way trickle (a byte every ms)
// through the agent's socket in a one-vCPU guest and counts, over a second
// of it, the wake-ups of the agent's Go sysmon thread (its second thread's
// voluntary switches, read from /proc by the guest, not through the
// agent). Between messages the data-plane loop parks in Go's poller and
// gives its P back (pump/wait.go), so sysmon sleeps deeply and nothing on
// the data path wakes it. A loop that waits holding its P (the raw waits
// of earlier builds) keeps sysmon polling every 10 ms, about 100 wake-ups a
// second, each of which preempts the client or the loop on one vCPU.
func TestAgentLoopLetsSysmonSleep(t *testing.T) {
	t.Parallel()
	const name, msgs = "org.vserial.park", 2500
	a := bootAgentArgs(t, Options{Ports: []Port{{Name: name, Nr: 1}}}, nil, name)
	g := a.g
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	// On one CPU a client woken by its reply must not preempt the loop.
	a.wantNice(ctx, t, -10)
	conn := g.DialPort(t, name)
	got := make(chan error, 1)
	go func() {
		_, err := io.CopyN(io.Discard, conn, msgs)
		got <- err
	}()
	before := a.listCounters(ctx, t, name)
	p, err := g.Start(ctx, "trickle", AgentSocket(name), strconv.Itoa(msgs), "1000")
	if err != nil {
		t.Fatal(err)
	}
	snap := func() counterSet {
		out, err := g.Run(ctx, "procsnap", strconv.Itoa(a.proc.Pid), "-")
		if err != nil {
			t.Fatalf("procsnap: %v\n%s", err, out)
		}
		c := procCounters(out)
		if _, ok := c["sysmon_vcsw"]; !ok {
			t.Fatalf("procsnap gave no second thread: %s", out)
		}
		return c
	}
	// The client's connection wakes sysmon (the agent accepts it through
	// Go's poller); its burst of polling ends within some 100 ms.
	time.Sleep(700 * time.Millisecond)
	s0, t0 := snap(), time.Now()
	time.Sleep(time.Second)
	s1, t1 := snap(), time.Now()
	if _, err := p.Wait(ctx); err != nil {
		t.Fatalf("trickle: %v", err)
	}
	select {
	case err := <-got:
		if err != nil {
			t.Fatalf("the host read: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("the host did not get every byte of the trickle")
	}
	after := a.listCounters(ctx, t, name)
	secs := t1.Sub(t0).Seconds()
	wakes := (s1["sysmon_vcsw"] - s0["sysmon_vcsw"]) / secs
	parks := after["loop_parks"] - before["loop_parks"]
	t.Logf("over %.2f s of the trickle: sysmon woke %.1f times a second, the agent used %.1f ms of CPU a second; the loop parked %d times for %d messages",
		secs, wakes, (s1["sched_ms"]-s0["sched_ms"])/secs, parks, msgs)
	if parks < msgs/2 {
		t.Errorf("the loop parked in Go's poller %d times for %d spaced messages; want about one park each", parks, msgs)
	}
	if wakes > 20 {
		t.Errorf("the agent's sysmon woke %.1f times a second while the loop only waited for a 1 ms trickle; want it asleep (a loop that keeps its P: about 100)", wakes)
	}
}
