package qemu

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
)

// The arithmetic of BenchmarkKernelVsAgent: medians and percentiles over
// rounds and pooled samples, and the counters it reads before and after
// each phase, as flat name → number maps that can be subtracted.

// median is the middle value of xs (the mean of the two middle values for
// an even count); NaN for none.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// percentile is the nearest-rank p-th percentile (0 < p ≤ 100) of xs: the
// smallest sample that at least p % of the samples do not exceed; NaN for
// none.
func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	rank := int(math.Ceil(p / 100 * float64(len(s))))
	return s[min(max(rank, 1), len(s))-1]
}

// spread is a median over rounds with the smallest and largest value.
type spread struct{ Med, Min, Max float64 }

func spreadOf(xs []float64) spread {
	if len(xs) == 0 {
		return spread{math.NaN(), math.NaN(), math.NaN()}
	}
	return spread{median(xs), slices.Min(xs), slices.Max(xs)}
}

func (s spread) String() string {
	return fmt.Sprintf("%.2f× [%.2f–%.2f]", s.Med, s.Min, s.Max)
}

// ratios divides a[i] by b[i] for each round.
func ratios(a, b []float64) []float64 {
	r := make([]float64, min(len(a), len(b)))
	for i := range r {
		r[i] = a[i] / b[i]
	}
	return r
}

// parseSamples parses pingpong's samples_us list.
func parseSamples(s string) ([]float64, error) {
	if s == "" {
		return nil, fmt.Errorf("no samples")
	}
	f := strings.Split(s, ",")
	xs := make([]float64, len(f))
	for i, v := range f {
		x, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return nil, fmt.Errorf("sample %d: %w", i, err)
		}
		xs[i] = x
	}
	return xs, nil
}

// counterSet is a snapshot of named counters.
type counterSet map[string]float64

// sub is c − before for every counter in c (a counter missing before
// counts from 0).
func (c counterSet) sub(before counterSet) counterSet {
	d := counterSet{}
	for k, v := range c {
		d[k] = v - before[k]
	}
	return d
}

// keys are c's names in order.
func (c counterSet) keys() []string {
	ks := make([]string, 0, len(c))
	for k := range c {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// listCounters finds every object under a "counters" key in the JSON of
// `vserial-agent list --json`, wherever it sits (a port's, a device's),
// and returns its numeric fields, nested ones too, as
// "OWNER.counters.FIELD" → value. OWNER is the path to the object that
// holds "counters", with an array element named by its "name", "socket",
// "addr", "device" or "id" field (the first that is set), else by its
// index: "agent.ports[org.vserial.bench].counters.kicks". Nothing is
// assumed about the counters' names, so the benchmark prints whatever the
// agent reports; no "counters" anywhere gives an empty set.
func listCounters(js []byte) (counterSet, error) {
	var v any
	if err := json.Unmarshal(js, &v); err != nil {
		return nil, fmt.Errorf("list --json: %w", err)
	}
	c := counterSet{}
	walkCounters(v, "", c)
	return c, nil
}

func walkCounters(v any, path string, out counterSet) {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			p := join(path, k)
			if k == "counters" {
				numbers(e, p, out)
				continue
			}
			if k == "bytes_in" || k == "bytes_out" {
				// A port's byte counts, beside its counters.
				numbers(e, p, out)
				continue
			}
			walkCounters(e, p, out)
		}
	case []any:
		for i, e := range v {
			walkCounters(e, fmt.Sprintf("%s[%s]", path, elementName(e, i)), out)
		}
	}
}

func join(path, k string) string {
	if path == "" {
		return k
	}
	return path + "." + k
}

func elementName(e any, i int) string {
	if m, ok := e.(map[string]any); ok {
		for _, k := range []string{"name", "socket", "addr", "device", "id"} {
			switch v := m[k].(type) {
			case string:
				if v != "" {
					return v
				}
			case float64:
				return strconv.FormatFloat(v, 'f', -1, 64)
			}
		}
	}
	return strconv.Itoa(i)
}

// numbers collects the numeric leaves under v.
func numbers(v any, path string, out counterSet) {
	switch v := v.(type) {
	case float64:
		out[path] = v
	case map[string]any:
		for k, e := range v {
			numbers(e, join(path, k), out)
		}
	case []any:
		for i, e := range v {
			numbers(e, fmt.Sprintf("%s[%d]", path, i), out)
		}
	}
}

// procCounters turns procsnap's output into counters: cpu_ms (utime +
// stime), sched_ms, vcsw, ivcsw, sysmon_vcsw (the voluntary switches of
// the process's second thread, Go's sysmon: each is a wake-up of it), and
// "irq N NAME" for each interrupt line.
func procCounters(out string) counterSet {
	kv := ParseKV(out)
	c := counterSet{}
	num := func(k string) (float64, bool) {
		v, err := strconv.ParseFloat(kv[k], 64)
		return v, err == nil
	}
	const msPerTick = 10 // USER_HZ 100 on x86 Linux
	if u, ok := num("utime_ticks"); ok {
		s, _ := num("stime_ticks")
		c["cpu_ms"] = (u + s) * msPerTick
	}
	if v, ok := num("sched_ns"); ok {
		c["sched_ms"] = v / 1e6
	}
	for _, k := range []string{"vcsw", "ivcsw"} {
		if v, ok := num(k); ok {
			c[k] = v
		}
	}
	if v, ok := num("vcsw_t1"); ok {
		c["sysmon_vcsw"] = v
	}
	for k := range kv {
		if n, ok := strings.CutPrefix(k, "irq:"); ok {
			v, _ := num(k)
			c["irq "+n+" "+kv["irqname:"+n]] = v
		}
	}
	return c
}
