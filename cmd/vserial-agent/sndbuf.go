package main

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
)

// wmemDefaultPath is the sysctl that gives every new socket its send
// buffer (tests point it at a file of their own).
var wmemDefaultPath = "/proc/sys/net/core/wmem_default"

// Bounds of run's --client-send-buffer (besides 0, which leaves the
// setting alone): below the kernel's default (about 208 KiB) it would only
// cost, and far above the few MiB that measured a gain it would only let
// every socket in the guest hold more unread.
const (
	minClientSendBuffer = 256 << 10
	maxClientSendBuffer = 64 << 20
)

// raiseSendBuffer sets net.core.wmem_default to size: the send buffer
// every socket created from then on starts with, the agent's clients'
// included. A client streaming guest→host blocks once its send buffer is
// full, and only then does the agent (batched while it streams) run and
// read; a bigger buffer means fewer of those hand-overs per MiB, each a
// process switch that TCG pays with a refill of its TLB (measured in
// docs/benchmarks.md). A client cannot be given a bigger buffer from the
// agent's end of its socket, hence the system-wide default; run sets it
// only when asked (--client-send-buffer).
//
// restore puts the old value back unless someone changed it meanwhile
// (then theirs stays). Sockets made while it was raised keep their size.
func raiseSendBuffer(size int) (old int, restore func() error, err error) {
	cur, err := readSysctlInt(wmemDefaultPath)
	if err != nil {
		return 0, nil, err
	}
	if err := writeSysctlInt(wmemDefaultPath, size); err != nil {
		return 0, nil, err
	}
	restore = func() error {
		now, err := readSysctlInt(wmemDefaultPath)
		if err != nil {
			return err
		}
		if now != size {
			return nil
		}
		return writeSysctlInt(wmemDefaultPath, cur)
	}
	return cur, restore, nil
}

func readSysctlInt(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(string(bytes.TrimSpace(b)))
	if err != nil {
		return 0, fmt.Errorf("%s: %q is not a number", path, bytes.TrimSpace(b))
	}
	return n, nil
}

// writeSysctlInt writes n to path as uio/pages.go writes nr_hugepages.
func writeSysctlInt(path string, n int) error {
	return os.WriteFile(path, []byte(strconv.Itoa(n)+"\n"), 0)
}
