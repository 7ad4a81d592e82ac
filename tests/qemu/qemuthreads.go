package qemu

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The benchmark samples QEMU's threads on the host around each transfer,
// to show which one a throughput is bound by: under TCG each vCPU runs in
// a thread of its own ("CPU 0/TCG"), while the port's chardev socket is
// read and written by the main loop ("qemu-system-x86"), which moves at
// most 4 KiB per port per pass host→guest. A few /proc reads per sample.

// ThreadSample is the CPU time of every thread of a process at one
// instant.
type ThreadSample struct {
	At      time.Time
	threads map[int]threadCPU // by thread id
}

type threadCPU struct {
	name string // the short name: see shortThreadName
	ns   int64  // time on a CPU so far
	wait int64  // time runnable but waiting for a CPU so far (0: unknown)
}

// SampleThreads reads the CPU time of each thread of process pid from
// /proc/PID/task/TID/schedstat (nanoseconds; stat's utime+stime count in
// 10 ms ticks, too coarse for a 16 MiB transfer of 10–60 ms) or, without
// schedstat, from stat. A thread that cannot be read is left out; a pid
// that cannot be read gives an empty sample.
func SampleThreads(pid int) ThreadSample {
	s := ThreadSample{At: time.Now(), threads: map[int]threadCPU{}}
	if pid <= 0 {
		return s
	}
	dir := fmt.Sprintf("/proc/%d/task", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return s
	}
	for _, e := range ents {
		tid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		comm, err := os.ReadFile(filepath.Join(dir, e.Name(), "comm"))
		if err != nil {
			continue
		}
		ns, wait, ok := threadNS(filepath.Join(dir, e.Name()))
		if !ok {
			continue
		}
		name := shortThreadName(strings.TrimSpace(string(comm)))
		if tid == pid {
			name = "main" // the main loop runs in the process's first thread
		}
		s.threads[tid] = threadCPU{name: name, ns: ns, wait: wait}
	}
	return s
}

// threadNS is a thread's time on a CPU and its time waiting for one in
// ns: schedstat's first two fields, else stat's utime+stime (fields 14
// and 15) at 100 ticks a second and no wait.
func threadNS(dir string) (ns, wait int64, ok bool) {
	if b, err := os.ReadFile(filepath.Join(dir, "schedstat")); err == nil {
		if f := strings.Fields(string(b)); len(f) > 1 {
			ns, err1 := strconv.ParseInt(f[0], 10, 64)
			wait, err2 := strconv.ParseInt(f[1], 10, 64)
			if err1 == nil && err2 == nil {
				return ns, wait, true
			}
		}
	}
	b, err := os.ReadFile(filepath.Join(dir, "stat"))
	if err != nil {
		return 0, 0, false
	}
	// The fields after the command, which is in parentheses and may hold
	// spaces: state is field 3, utime 14, stime 15.
	_, rest, ok := strings.Cut(string(b), ") ")
	f := strings.Fields(rest)
	if !ok || len(f) < 13 {
		return 0, 0, false
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, 0, false
	}
	return (ut + st) * 10_000_000, 0, true
}

// shortThreadName names QEMU's threads for the report (the harness starts
// QEMU with -name debug-threads=on, which names them): "cpuN" for
// "CPU N/TCG" (or /KVM), "unnamed" for a thread that kept the process's
// name ("qemu-system-x86", cut to 15 bytes), any other name with its
// spaces replaced. The main loop, the process's first thread, is "main"
// (SampleThreads).
func shortThreadName(comm string) string {
	if strings.HasPrefix(comm, "qemu-system") {
		return "unnamed"
	}
	if n, ok := strings.CutPrefix(comm, "CPU "); ok {
		if nr, _, ok := strings.Cut(n, "/"); ok {
			return "cpu" + nr
		}
	}
	return strings.ReplaceAll(comm, " ", "_")
}

// ThreadLoad is what each thread of a process spent on a CPU over a span
// (Busy) and runnable but waiting for a CPU (Queued: the host's cores
// were taken), as shares of the span's wall time (1 = one core all the
// time), threads with the same short name summed.
type ThreadLoad struct {
	Wall         time.Duration
	Busy, Queued map[string]float64
}

// Since is the load of the threads between an earlier sample and s. A
// thread born within the span counts with all its time; one that ended
// within it is missing.
func (s ThreadSample) Since(earlier ThreadSample) ThreadLoad {
	l := ThreadLoad{Wall: s.At.Sub(earlier.At), Busy: map[string]float64{}, Queued: map[string]float64{}}
	if l.Wall <= 0 || len(s.threads) == 0 {
		return l
	}
	for tid, t := range s.threads {
		was := earlier.threads[tid]
		l.Busy[t.name] += float64(max(t.ns-was.ns, 0)) / float64(l.Wall.Nanoseconds())
		l.Queued[t.name] += float64(max(t.wait-was.wait, 0)) / float64(l.Wall.Nanoseconds())
	}
	return l
}

// Names are the load's thread names in report order: main, the vCPUs by
// number, then the others by load, busiest first.
func (l ThreadLoad) Names() []string {
	names := make([]string, 0, len(l.Busy))
	for n := range l.Busy {
		names = append(names, n)
	}
	rank := func(n string) int {
		switch {
		case n == "main":
			return 0
		case strings.HasPrefix(n, "cpu"):
			return 1
		}
		return 2
	}
	slices.SortFunc(names, func(a, b string) int {
		if ra, rb := rank(a), rank(b); ra != rb {
			return ra - rb
		}
		if rank(a) == 2 && l.Busy[a] != l.Busy[b] {
			if l.Busy[a] > l.Busy[b] {
				return -1
			}
			return 1
		}
		return strings.Compare(a, b)
	})
	return names
}

// String is e.g. "main 97% (queued 3%) cpu0 60% worker 2% (62 ms)":
// main and the vCPUs always, other threads from 1 % on, with their wait
// for a CPU from 1 % on.
func (l ThreadLoad) String() string {
	if len(l.Busy) == 0 {
		return "(no sample)"
	}
	var parts []string
	for _, n := range l.Names() {
		v := l.Busy[n]
		if n != "main" && !strings.HasPrefix(n, "cpu") && v < 0.01 {
			continue
		}
		p := fmt.Sprintf("%s %.0f%%", n, 100*v)
		if q := l.Queued[n]; q >= 0.01 {
			p += fmt.Sprintf(" (queued %.0f%%)", 100*q)
		}
		parts = append(parts, p)
	}
	return fmt.Sprintf("%s (%.0f ms)", strings.Join(parts, " "), float64(l.Wall.Microseconds())/1e3)
}

// QEMUPid is the pid of the guest's QEMU process.
func (g *Guest) QEMUPid() int {
	if g.cmd == nil || g.cmd.Process == nil {
		return 0
	}
	return g.cmd.Process.Pid
}
