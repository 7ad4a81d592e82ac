package qemu

import (
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestShortThreadName(t *testing.T) {
	for comm, want := range map[string]string{
		"qemu-system-x86": "unnamed",
		"CPU 0/TCG":       "cpu0",
		"CPU 1/KVM":       "cpu1",
		"call_rcu":        "call_rcu",
		"IO mon_iothread": "IO_mon_iothread",
	} {
		if got := shortThreadName(comm); got != want {
			t.Errorf("shortThreadName(%q) = %q, want %q", comm, got, want)
		}
	}
}

// TestSampleThreadsSeesBusyThread samples this process around 100 ms of
// spinning on one thread: the threads' summed load must show about one
// core.
func TestSampleThreadsSeesBusyThread(t *testing.T) {
	t0 := SampleThreads(os.Getpid())
	if len(t0.threads) == 0 {
		t.Fatal("no threads sampled")
	}
	done := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		for end := time.Now().Add(100 * time.Millisecond); time.Now().Before(end); {
		}
		close(done)
	}()
	<-done
	l := SampleThreads(os.Getpid()).Since(t0)
	sum := 0.0
	for _, v := range l.Busy {
		sum += v
	}
	// The spin is one core for most of the span; on a loaded host less.
	if sum < 0.3 || sum > float64(runtime.NumCPU())+0.5 {
		t.Errorf("threads' load over %v: %.2f cores (%v), want about 1", l.Wall, sum, l)
	}
}

func TestThreadLoadString(t *testing.T) {
	l := ThreadLoad{Wall: 62 * time.Millisecond, Busy: map[string]float64{
		"cpu0": 0.6, "main": 0.97, "worker": 0.02, "call_rcu": 0.001,
	}, Queued: map[string]float64{"main": 0.03, "cpu0": 0.004}}
	if got, want := l.String(), "main 97% (queued 3%) cpu0 60% worker 2% (62 ms)"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	t0 := ThreadSample{At: time.Unix(0, 0), threads: map[int]threadCPU{1: {"main", 0, 1e6}, 2: {"cpu0", 5e6, 0}}}
	t1 := ThreadSample{At: time.Unix(0, 100e6), threads: map[int]threadCPU{1: {"main", 90e6, 6e6}, 2: {"cpu0", 55e6, 0}, 3: {"worker", 10e6, 0}}}
	got := t1.Since(t0)
	if !strings.HasPrefix(got.String(), "main 90% (queued 5%) cpu0 50% worker 10%") {
		t.Errorf("Since: %v", got)
	}
	med, line := summarizeLoads([]ThreadLoad{got, {Busy: map[string]float64{"main": 0.7, "cpu0": 0.3}}, {Busy: map[string]float64{"main": 0.8, "cpu0": 0.4}}})
	// worker's median is 0 %: left out of the line.
	// main's median wait is 0 % (queued 5 % in one round of three): left out.
	if med["main"] != 0.8 || line != "main 80% [70–90], cpu0 40% [30–50]" {
		t.Errorf("summarizeLoads: %v %q", med, line)
	}
}

func TestParseChrReads(t *testing.T) {
	log := "handle_qmp_command mon 0x1 req: {}\n" +
		"virtio_console_chr_read port 1, size 4096\n" +
		"12@1.000002:virtio_console_chr_read port 1, size 100\n" +
		"virtio_console_chr_read port 3, size 7\n" +
		"virtio_console_chr_read port 1, size" // cut off: left out
	got := parseChrReads(log)
	if got[1] != (ReadSizes{Count: 2, Bytes: 4196, Max: 4096}) || got[3] != (ReadSizes{Count: 1, Bytes: 7, Max: 7}) || len(got) != 2 {
		t.Errorf("parseChrReads: %+v", got)
	}
	if s := got[1].String(); s != "2 reads, mean 2098 B, max 4096 B" {
		t.Errorf("String: %q", s)
	}
}
