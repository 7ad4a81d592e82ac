package qemu

import (
	"fmt"
	"strings"
	"testing"
)

// TestAnalyzeSchedTail builds a trace of 100 round trips in which the
// client (pid 100) is woken twice per round trip by the agent's loop (pid
// 201), and one round trip is slow because the agent's sysmon (pid 200,
// woken from a hard interrupt) ran in it: the tail must name sysmon, and
// the median must be the ordinary round trip.
func TestAnalyzeSchedTail(t *testing.T) {
	var b strings.Builder
	b.WriteString("# tracer: nop\n#\n")
	ts := 10.0
	line := func(comm string, pid int, flags, name, rest string) {
		fmt.Fprintf(&b, "%16s-%-7d [000] %s %12.6f: %s: %s\n", comm, pid, flags, ts, name, rest)
	}
	step := func(us float64) { ts += us / 1e6 }
	for i := range 100 {
		for range 2 { // the request read (a wake-up for nothing) and the reply
			line("vserial-agent", 201, "d..3.", "sched_wakeup", "comm=exe pid=100 prio=120 target_cpu=000")
			line("vserial-agent", 201, "d..2.", "sched_switch", "prev_comm=vserial-agent prev_pid=201 prev_prio=120 prev_state=R ==> next_comm=exe next_pid=100 next_prio=120")
			step(50)
			line("exe", 100, "d..2.", "sched_switch", "prev_comm=exe prev_pid=100 prev_prio=120 prev_state=S ==> next_comm=vserial-agent next_pid=201 next_prio=120")
			step(150)
		}
		if i == 60 {
			line("vserial-agent", 201, "d.h2.", "sched_wakeup", "comm=vserial-agent pid=200 prio=120 target_cpu=000")
			line("vserial-agent", 201, "d..2.", "sched_switch", "prev_comm=vserial-agent prev_pid=201 prev_prio=120 prev_state=R ==> next_comm=vserial-agent next_pid=200 next_prio=120")
			step(300)
			line("vserial-agent", 200, "d..2.", "sched_switch", "prev_comm=vserial-agent prev_pid=200 prev_prio=120 prev_state=S ==> next_comm=vserial-agent next_pid=201 next_prio=120")
		}
	}
	st, err := AnalyzeSchedTail(b.String(), 100, "vserial-agent")
	if err != nil {
		t.Fatal(err)
	}
	t.Log(st)
	if st.PerRT != 2 || st.RoundTrips != 99 || st.Tail != 1 {
		t.Errorf("per round trip %d, round trips %d, tail %d; want 2, 99, 1", st.PerRT, st.RoundTrips, st.Tail)
	}
	if st.P50US < 399 || st.P50US > 401 || st.TailUS < 699 {
		t.Errorf("p50 %.1f µs, tail from %.1f µs; want 400 and ≥ 700", st.P50US, st.TailUS)
	}
	if st.Sysmon != 1 || st.AgentOther != 0 || st.Others != 0 || st.Idle != 0 || st.None != 0 {
		t.Errorf("tail classified %+v; want the sysmon span only", st)
	}
	if _, err := AnalyzeSchedTail("# nothing\n", 100, "vserial-agent"); err == nil {
		t.Error("an empty trace gave no error")
	}
}
