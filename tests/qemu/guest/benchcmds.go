package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vserial/vserial/tests/qemu/internal/wire"
)

// Built-ins for BenchmarkKernelVsAgent: clients that use several ports at
// once, a one-way trickle, idle clients, and snapshots of a process's CPU
// time and the device's interrupts (the calibration is calibcmds.go).

// msink reads N bytes from each PATH at once (one goroutine each) and
// prints the aggregate rate from the first byte on any port to the last
// byte on all, and the slowest and fastest port's own rate. With raw, on
// blocking descriptors (openThreaded).
func msink(args []string) error {
	raw := len(args) > 0 && args[0] == "raw"
	if raw {
		args = args[1:]
	}
	if len(args) < 2 {
		return errors.New("usage: msink [raw] N PATH [PATH ...]")
	}
	n, err := parseSize(args[0])
	if err != nil {
		return err
	}
	type span struct{ first, last time.Time }
	spans := make([]span, len(args)-1)
	errs := make([]error, len(spans))
	var wg sync.WaitGroup
	for i, path := range args[1:] {
		f, err := openThreaded(path, raw)
		if err != nil {
			return err
		}
		defer f.Close()
		wg.Go(func() {
			buf := make([]byte, 256<<10)
			for got := int64(0); got < n; {
				k, err := f.Read(buf[:min(int64(len(buf)), n-got)])
				if k > 0 && got == 0 {
					spans[i].first = time.Now()
				}
				got += int64(k)
				if err != nil || k == 0 {
					errs[i] = fmt.Errorf("%s: after %d of %d bytes: %v", path, got, n, err)
					return
				}
			}
			spans[i].last = time.Now()
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	first, last := spans[0].first, spans[0].last
	lo, hi := 0.0, 0.0
	for i, s := range spans {
		if s.first.Before(first) {
			first = s.first
		}
		if s.last.After(last) {
			last = s.last
		}
		r := float64(n) / s.last.Sub(s.first).Seconds() / 1e6
		if i == 0 || r < lo {
			lo = r
		}
		if i == 0 || r > hi {
			hi = r
		}
	}
	total := n * int64(len(spans))
	secs := last.Sub(first).Seconds()
	fmt.Fprintf(stdout, "bytes=%d secs=%.6f mbps=%.3f port_min_mbps=%.3f port_max_mbps=%.3f\n",
		total, secs, float64(total)/secs/1e6, lo, hi)
	return nil
}

// msource writes N bytes of the first wire.BlockSize bytes of
// wire.Pattern(SEED), repeated, to each PATH at once (one goroutine each;
// with raw, on blocking descriptors: openThreaded).
// The host checks and times what arrives.
func msource(args []string) error {
	raw := len(args) > 0 && args[0] == "raw"
	if raw {
		args = args[1:]
	}
	if len(args) < 3 {
		return errors.New("usage: msource [raw] N SEED PATH [PATH ...]")
	}
	n, seed, err := parseSizeSeed(args[0], args[1])
	if err != nil {
		return err
	}
	block := make([]byte, wire.BlockSize)
	_, _ = wire.Pattern(seed).Read(block)
	errs := make([]error, len(args)-2)
	var wg sync.WaitGroup
	for i, path := range args[2:] {
		f, err := openThreaded(path, raw)
		if err != nil {
			return err
		}
		wg.Go(func() {
			defer f.Close()
			for left := n; left > 0; {
				k := min(int64(len(block)), left)
				if _, err := f.Write(block[:k]); err != nil {
					errs[i] = fmt.Errorf("%s: after %d of %d bytes: %w", path, n-left, n, err)
					return
				}
				left -= k
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "bytes=%d\n", n*int64(len(errs)))
	return nil
}

// trickle writes COUNT single bytes to PATH, one every INTERVAL_US
// microseconds on a fixed schedule (a late byte does not push the next
// ones back), and reads nothing.
func trickle(args []string) error {
	if len(args) != 3 {
		return errors.New("usage: trickle PATH COUNT INTERVAL_US")
	}
	count, err1 := strconv.Atoi(args[1])
	us, err2 := strconv.Atoi(args[2])
	if err := errors.Join(err1, err2); err != nil || count <= 0 || us <= 0 {
		return fmt.Errorf("bad count or interval %q", args[1:])
	}
	f, err := openPath(args[0])
	if err != nil {
		return err
	}
	defer f.Close()
	interval := time.Duration(us) * time.Microsecond
	start := time.Now()
	for i := range count {
		time.Sleep(time.Until(start.Add(time.Duration(i) * interval)))
		if _, err := f.Write([]byte{byte(i)}); err != nil {
			return fmt.Errorf("byte %d: %w", i, err)
		}
	}
	fmt.Fprintf(stdout, "count=%d secs=%.3f\n", count, time.Since(start).Seconds())
	return nil
}

// hold connects to (or opens) every PATH, then creates READYFILE and
// keeps the connections open, reading nothing, for SECONDS.
func hold(args []string) error {
	if len(args) < 3 {
		return errors.New("usage: hold READYFILE SECONDS PATH [PATH ...]")
	}
	s, err := strconv.ParseFloat(args[1], 64)
	if err != nil {
		return err
	}
	for _, path := range args[2:] {
		f, err := openPath(path)
		if err != nil {
			return err
		}
		defer f.Close()
	}
	if err := touch(args[:1]); err != nil {
		return err
	}
	time.Sleep(time.Duration(s * float64(time.Second)))
	fmt.Fprintf(stdout, "held=%d\n", len(args)-2)
	return nil
}

// procsnap prints, as key=value, what the benchmark counts around a
// measurement: for process PID (0: none) its CPU time as /proc/PID/stat
// has it (utime_ticks, stime_ticks: the whole process, in USER_HZ), the
// run time of its threads from schedstat in ns (sched_ns; threads that
// already exited are missing), and its threads' voluntary and involuntary
// context switches (vcsw, ivcsw); for the PCI function ADDR (""
// or "-": none) the count of each of its interrupt lines in
// /proc/interrupts (irq:N=count, summed over CPUs) and the line's name
// (irqname:N=name, spaces as "_").
func procsnap(args []string) error {
	if len(args) != 2 {
		return errors.New("usage: procsnap PID ADDR")
	}
	var out []string
	if args[0] != "0" {
		kv, err := procCounters("/proc/" + args[0])
		if err != nil {
			return err
		}
		out = append(out, kv...)
	}
	if args[1] != "" && args[1] != "-" {
		kv, err := deviceIRQs(args[1])
		if err != nil {
			return err
		}
		out = append(out, kv...)
	}
	fmt.Fprintln(stdout, strings.Join(out, " "))
	return nil
}

func procCounters(dir string) ([]string, error) {
	f, err := procStat(dir)
	if err != nil {
		return nil, err
	}
	kv := []string{"utime_ticks=" + f[11], "stime_ticks=" + f[12]}
	tasks, err := os.ReadDir(filepath.Join(dir, "task"))
	if err != nil {
		return nil, err
	}
	var schedNS, vcsw, ivcsw uint64
	// The second thread of a Go program (the second lowest TID) is the
	// runtime's sysmon.
	tids := make([]int, 0, len(tasks))
	for _, t := range tasks {
		if id, err := strconv.Atoi(t.Name()); err == nil {
			tids = append(tids, id)
		}
	}
	slices.Sort(tids)
	sysmon := -1
	for _, t := range tasks {
		td := filepath.Join(dir, "task", t.Name())
		if b, err := os.ReadFile(filepath.Join(td, "schedstat")); err == nil {
			if f := strings.Fields(string(b)); len(f) > 0 {
				v, _ := strconv.ParseUint(f[0], 10, 64)
				schedNS += v
			}
		}
		st, err := os.Open(filepath.Join(td, "status"))
		if err != nil {
			continue // the thread exited
		}
		sc := bufio.NewScanner(st)
		for sc.Scan() {
			k, v, _ := strings.Cut(sc.Text(), ":")
			n, _ := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			switch k {
			case "voluntary_ctxt_switches":
				vcsw += n
				if len(tids) > 1 && t.Name() == strconv.Itoa(tids[1]) {
					sysmon = int(n)
				}
			case "nonvoluntary_ctxt_switches":
				ivcsw += n
			}
		}
		st.Close()
	}
	if sysmon >= 0 {
		kv = append(kv, fmt.Sprintf("vcsw_t1=%d", sysmon))
	}
	return append(kv, fmt.Sprintf("sched_ns=%d vcsw=%d ivcsw=%d", schedNS, vcsw, ivcsw)), nil
}

// deviceIRQs reports the /proc/interrupts lines of the PCI function addr:
// its INTx line and MSI vectors as sysfs lists them, and any line whose
// name mentions the address (vfio-msix[0](0000:00:03.0)) or is one of the
// drivers that can hold it (virtioN-…, uio_pci_generic).
func deviceIRQs(addr string) ([]string, error) {
	dev := filepath.Join("/sys/bus/pci/devices", addr)
	ours := map[string]bool{}
	if b, err := os.ReadFile(filepath.Join(dev, "irq")); err == nil {
		if s := strings.TrimSpace(string(b)); s != "0" {
			ours[s] = true
		}
	}
	if ents, err := os.ReadDir(filepath.Join(dev, "msi_irqs")); err == nil {
		for _, e := range ents {
			ours[e.Name()] = true
		}
	}
	b, err := os.ReadFile("/proc/interrupts")
	if err != nil {
		return nil, err
	}
	lines := strings.Split(string(b), "\n")
	if len(lines) == 0 {
		return nil, errors.New("empty /proc/interrupts")
	}
	cpus := len(strings.Fields(lines[0]))
	var kv []string
	for _, line := range lines[1:] {
		num, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) < cpus {
			continue
		}
		name := strings.Join(f[cpus:], "_")
		if !ours[num] && !strings.Contains(name, addr) && !strings.Contains(name, "virtio") && !strings.Contains(name, "uio") {
			continue
		}
		var sum uint64
		for _, c := range f[:cpus] {
			v, _ := strconv.ParseUint(c, 10, 64)
			sum += v
		}
		kv = append(kv, fmt.Sprintf("irq:%s=%d irqname:%s=%s", num, sum, num, name))
	}
	return kv, nil
}

// waitNoChild waits until process PID has no child process left (socat's
// forked relay of the last connection has exited and closed the device).
func waitNoChild(args []string) error {
	if len(args) != 2 {
		return errors.New("usage: wait-nochild PID SECONDS")
	}
	s, err := strconv.ParseFloat(args[1], 64)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(time.Duration(s * float64(time.Second)))
	for {
		kids, err := children(args[0])
		if err != nil {
			return err
		}
		if len(kids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("process %s still has children %v after %ss", args[0], kids, args[1])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// children lists the processes whose parent is pid.
func children(pid string) ([]string, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var kids []string
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		if f, err := procStat(filepath.Join("/proc", e.Name())); err == nil && f[1] == pid {
			kids = append(kids, e.Name())
		}
	}
	return kids, nil
}
