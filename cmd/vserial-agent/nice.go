package main

import (
	"errors"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// defaultNice is run's --nice auto on one CPU. On one vCPU a client woken by its reply
// preempts an agent of the same priority before the data-plane loop has
// gone back to sleep; the client then writes its next request to a loop
// that is not waiting (no wake-up, so no preemption), blocks reading,
// and the loop's read of the request wakes it for nothing (a Unix socket
// wakes its writer when the reader frees its buffer): four process
// switches per round trip where a relay needs two. With the agent's
// threads at a better nice the loop finishes its pass and sleeps first,
// the client's request wakes it and it runs at once, before the client
// blocks: two switches (measured, uio, one vCPU: round trip p50 0.87×,
// p99 0.81× the same build without; docs/data-plane.md). The loop also
// leaves EPOLLOUT out of a client's epoll interest unless the client's
// buffer is full (pump/client.go), or every reply the client reads would
// wake the loop, which would then preempt the client in turn.
//
// On more than one CPU auto means 0: there the client runs on another
// vCPU, the switches are not the relay's, and a loop at -10 that spins or
// polls keeps a client woken on its vCPU waiting (uio, two vCPUs, against
// the build without: round trip p50 A/B 0.99x and 1.03x, p99 1.19x and
// 1.40x, the trickle's CPU 1.15x).
const defaultNice = -10

// parseNice reads --nice: auto (defaultNice on one CPU, 0 on more) or a
// value from -20 to 19.
func parseNice(s string, cpus int) (int, error) {
	if s == "auto" {
		if cpus > 1 {
			return 0, nil
		}
		return defaultNice, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < -20 || n > 19 {
		return 0, errors.New("want auto or -20 to 19")
	}
	return n, nil
}

// setNice gives every thread of the process the nice value n. Linux keeps
// it per thread and a new thread takes its creator's, so once every
// thread has it, the threads Go starts later have it too; a thread
// started during the pass is caught by the next one.
func setNice(n int) error {
	for range 4 {
		ents, err := os.ReadDir("/proc/self/task")
		if err != nil {
			return err
		}
		changed := 0
		for _, e := range ents {
			tid, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			raw, err := unix.Getpriority(unix.PRIO_PROCESS, tid)
			if err == unix.ESRCH {
				continue // ended meanwhile
			}
			if err == nil && 20-raw == n {
				continue
			}
			if err := unix.Setpriority(unix.PRIO_PROCESS, tid, n); err != nil && err != unix.ESRCH {
				return fmt.Errorf("thread %d: %w", tid, err)
			}
			changed++
		}
		if changed == 0 {
			return nil
		}
	}
	return nil
}
