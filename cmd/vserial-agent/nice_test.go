package main

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// threadNices reads the nice value of every thread of the process
// (field 19 of /proc/self/task/TID/stat).
func threadNices(t *testing.T) map[int]int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]int{}
	for _, e := range ents {
		b, err := os.ReadFile("/proc/self/task/" + e.Name() + "/stat")
		if err != nil {
			continue // ended meanwhile
		}
		// After the command, which is in parentheses and may hold spaces.
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		n, err := strconv.Atoi(f[16]) // field 19 of stat, 17th after the command
		if err != nil {
			t.Fatalf("stat of thread %s: %q", e.Name(), b)
		}
		tid, _ := strconv.Atoi(e.Name())
		out[tid] = n
	}
	return out
}

// TestSetNiceReachesEveryThread runs in a child process (a worse nice
// value cannot be taken back without privilege): setNice gives every
// thread the value, and a thread Go starts afterwards has it too.
func TestSetNiceReachesEveryThread(t *testing.T) {
	if os.Getenv("VSERIAL_TEST_SETNICE") == "1" {
		if err := setNice(7); err != nil {
			t.Fatal(err)
		}
		// Threads started now take their creator's value.
		done := make(chan struct{})
		for range 4 {
			go func() {
				var b [1]byte
				unix.Read(-1, b[:]) // a system call on a thread of its own, briefly
				done <- struct{}{}
			}()
		}
		for range 4 {
			<-done
		}
		for tid, n := range threadNices(t) {
			if n != 7 {
				t.Errorf("thread %d has nice %d, want 7", tid, n)
			}
		}
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run", "^TestSetNiceReachesEveryThread$", "-test.count=1")
	cmd.Env = append(os.Environ(), "VSERIAL_TEST_SETNICE=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "PASS") {
		t.Fatalf("child did not run the test:\n%s", out)
	}
}
