package qemu

import (
	"bufio"
	"cmp"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// SchedTail is what a guest scheduler trace of a round-trip phase says
// about its slowest round trips: who ran in them. A round trip is the
// span from one wake-up of the client to the one a round trip later
// (PerRT wake-ups apart: the client of a socket relay is also woken, for
// nothing, when the relay reads its request).
type SchedTail struct {
	RoundTrips    int     // spans found
	PerRT         int     // client wake-ups per round trip
	P50US, TailUS float64 // the median span, and the shortest of the tail
	Tail          int     // spans in the slowest 2 %
	// Of the tail: spans in which the agent's sysmon ran (the agent thread
	// woken most often from a hard interrupt: Go's sysmon sleeps on a
	// timer), another agent thread than the loop and sysmon ran, a thread
	// of neither the agent nor the client ran, the vCPU idled ≥ 150 µs,
	// and none of these.
	Sysmon, AgentOther, Others, Idle, None int
}

func (t SchedTail) String() string {
	return fmt.Sprintf("%d round trips (client woken %d× each), p50 %.0f µs; the slowest %d (≥ %.0f µs): agent's sysmon ran in %d, other agent threads in %d, other processes or threads in %d, the vCPU idle ≥ 150 µs in %d, none of these %d",
		t.RoundTrips, t.PerRT, t.P50US, t.Tail, t.TailUS, t.Sysmon, t.AgentOther, t.Others, t.Idle, t.None)
}

// schedLine matches one event of the guest's trace (ftrace's text format).
var schedLine = regexp.MustCompile(`^\s*(.+)-(\d+)\s+\[\d+\]\s+(\S+)\s+([\d.]+):\s+(\w+):\s*(.*)$`)

var (
	wakePid = regexp.MustCompile(`\bpid=(\d+)`)
	nextPid = regexp.MustCompile(`\bnext_pid=(\d+)`)
)

type schedEvent struct {
	ts    float64 // seconds
	pid   int     // the thread the event ran on
	comm  string
	hard  bool // in hard interrupt context
	name  string
	other int // the thread woken (sched_wakeup) or switched to (sched_switch)
}

// AnalyzeSchedTail reads a scheduler trace of rtts round trips made by
// one client through agentComm's threads ("" when no agent took part).
func AnalyzeSchedTail(trace string, rtts int, agentComm string) (SchedTail, error) {
	var evs []schedEvent
	sc := bufio.NewScanner(strings.NewReader(trace))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		m := schedLine.FindStringSubmatch(sc.Text())
		if m == nil { // comments and the trace's header
			continue
		}
		pid, _ := strconv.Atoi(m[2])
		ts, err := strconv.ParseFloat(m[4], 64)
		if err != nil {
			continue
		}
		e := schedEvent{ts: ts, pid: pid, comm: m[1], hard: strings.Contains(m[3], "h"), name: m[5], other: -1}
		switch e.name {
		case "sched_wakeup":
			if w := wakePid.FindStringSubmatch(m[6]); w != nil {
				e.other, _ = strconv.Atoi(w[1])
			}
		case "sched_switch":
			if w := nextPid.FindStringSubmatch(m[6]); w != nil {
				e.other, _ = strconv.Atoi(w[1])
			}
		}
		evs = append(evs, e)
	}
	if err := sc.Err(); err != nil {
		return SchedTail{}, err
	}
	var t SchedTail
	if rtts <= 0 || len(evs) == 0 {
		return t, fmt.Errorf("no events or no round trips (%d events, %d round trips)", len(evs), rtts)
	}
	// The client is the thread woken most often; the agent's threads are
	// those named agentComm; its loop the one that switches most; its
	// sysmon the one woken most from a hard interrupt.
	woken, hardWoken, switches := map[int]int{}, map[int]int{}, map[int]int{}
	agent := map[int]bool{}
	for _, e := range evs {
		if agentComm != "" && strings.HasPrefix(e.comm, agentComm) {
			agent[e.pid] = true
		}
		switch e.name {
		case "sched_wakeup":
			woken[e.other]++
			if e.hard {
				hardWoken[e.other]++
			}
		case "sched_switch":
			switches[e.pid]++
		}
	}
	most := func(m map[int]int, ok func(int) bool) int {
		best, n := -1, 0
		for p, c := range m {
			if ok(p) && (c > n || c == n && p < best) {
				best, n = p, c
			}
		}
		return best
	}
	client := most(woken, func(p int) bool { return !agent[p] && p != 0 })
	loop := most(switches, func(p int) bool { return agent[p] })
	sysmon := most(hardWoken, func(p int) bool { return agent[p] && p != loop })
	var wakes []int
	for i, e := range evs {
		if e.name == "sched_wakeup" && e.other == client {
			wakes = append(wakes, i)
		}
	}
	t.PerRT = max(1, int(math.Round(float64(len(wakes))/float64(rtts))))
	type span struct {
		us  float64
		run map[int]float64 // µs each thread ran (0: idle)
	}
	var spans []span
	for j := 0; j+t.PerRT < len(wakes); j += t.PerRT {
		a, b := wakes[j], wakes[j+t.PerRT]
		s := span{us: (evs[b].ts - evs[a].ts) * 1e6, run: map[int]float64{}}
		cur, at := evs[a].pid, evs[a].ts
		for _, e := range evs[a : b+1] {
			if e.name == "sched_switch" && e.other >= 0 {
				s.run[cur] += (e.ts - at) * 1e6
				cur, at = e.other, e.ts
			}
		}
		s.run[cur] += (evs[b].ts - at) * 1e6
		spans = append(spans, s)
	}
	if len(spans) == 0 {
		return t, fmt.Errorf("client %d: %d wake-ups, no round trip", client, len(wakes))
	}
	slices.SortFunc(spans, func(x, y span) int { return cmp.Compare(x.us, y.us) })
	t.RoundTrips = len(spans)
	t.P50US = spans[len(spans)/2].us
	t.Tail = max(1, len(spans)/50)
	tail := spans[len(spans)-t.Tail:]
	t.TailUS = tail[0].us
	for _, s := range tail {
		hit := false
		if sysmon >= 0 && s.run[sysmon] > 0 {
			t.Sysmon++
			hit = true
		}
		for p, us := range s.run {
			if us > 0 && agent[p] && p != loop && p != sysmon {
				t.AgentOther++
				hit = true
				break
			}
		}
		for p, us := range s.run {
			if us > 0 && !agent[p] && p != client && p != 0 {
				t.Others++
				hit = true
				break
			}
		}
		if s.run[0] >= 150 {
			t.Idle++
			hit = true
		}
		if !hit {
			t.None++
		}
	}
	return t, nil
}
