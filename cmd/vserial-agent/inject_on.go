//go:build faultinject

package main

// Fault injection for the guest tests. A binary built with -tags faultinject
// commits one driver.Fault each time it gets SIGUSR1, as described by the
// first line of the file named by $VSERIAL_FAULT_FILE (default
// /tmp/vserial-fault):
//
//	DEV PORT FAULT [ADDR]
//
// or the single word "panic", which panics in the injecting goroutine (the
// agent's last gasp must reach the host, then the process dies). DEV is
// the device index, PORT the port id, FAULT zero-length or address,
// ADDR the device address (hex, 0x...) an address fault points at, or
// "unmapped": an IOVA the IOMMU never mapped (VFIO type1 only). After
// the injection it waits (at most faultWait) for the device to be reset
// and brought up again, then writes FILE.done.N (N: the device's count of
// injections, from 1) with one line: the outcome (reset, or accepted, or
// none) followed by the process's goroutines, open descriptors and memory
// mappings and the address used, so a test knows when the device is back and can check that
// recoveries leak nothing. The same line is logged.
// The driver's limit of resets a minute is raised to faultMaxResets
// ($VSERIAL_MAX_RESETS sets another).

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vserial/vserial/driver"
	"github.com/vserial/vserial/internal/guard"
	"github.com/vserial/vserial/internal/supervisor"
)

// faultMaxResets is the faultinject build's limit of resets a minute: high,
// so that a test can inject many faults in a row.
const faultMaxResets = 1 << 20

func init() {
	maxResets = faultMaxResets
	if v := os.Getenv("VSERIAL_MAX_RESETS"); v != "" {
		if n, err := strconv.Atoi(v); err == nil && n > 0 {
			maxResets = n
		}
	}
}

type faultRequest struct {
	dev      int
	port     uint32
	fault    driver.Fault
	addr     uint64
	unmapped bool // addr is the device's never-mapped IOVA
}

func parseFaultRequest(line string) (faultRequest, error) {
	f := strings.Fields(line)
	if len(f) < 3 || len(f) > 4 {
		return faultRequest{}, fmt.Errorf("fault request %q: want DEV PORT FAULT [ADDR]", line)
	}
	dev, err := strconv.Atoi(f[0])
	if err != nil || dev < 0 {
		return faultRequest{}, fmt.Errorf("fault request: device %q", f[0])
	}
	port, err := strconv.ParseUint(f[1], 10, 32)
	if err != nil {
		return faultRequest{}, fmt.Errorf("fault request: port %q", f[1])
	}
	kind, err := driver.ParseFault(f[2])
	if err != nil {
		return faultRequest{}, err
	}
	r := faultRequest{dev: dev, port: uint32(port), fault: kind}
	if len(f) == 4 && f[3] == "unmapped" {
		r.unmapped = true
	} else if len(f) == 4 {
		if r.addr, err = strconv.ParseUint(f[3], 0, 64); err != nil {
			return faultRequest{}, fmt.Errorf("fault request: address %q", f[3])
		}
	}
	return r, nil
}

// startFaultInjection follows SIGUSR1 until ctx ends; devices returns the
// devices opened so far, by device index. It starts before the devices
// are opened, so that a signal sent once the ports are up never finds
// SIGUSR1's default action (the end of the process).
func startFaultInjection(ctx context.Context, devices func() []supervisor.Device, log *slog.Logger) {
	path := os.Getenv("VSERIAL_FAULT_FILE")
	if path == "" {
		path = "/tmp/vserial-fault"
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGUSR1)
	log.Warn("fault injection enabled (faultinject build)", "file", path, "max_resets", maxResets)
	go func() {
		defer guard.Recover()
		defer signal.Stop(sig)
		for {
			select {
			case <-ctx.Done():
				return
			case <-sig:
			}
			b, err := os.ReadFile(path)
			if err != nil {
				log.Error("fault injection", "err", err)
				continue
			}
			line, _, _ := strings.Cut(string(b), "\n")
			if strings.TrimSpace(line) == "panic" {
				// A panic outside run's goroutine: the last gasp
				// (internal/guard) must still reach the host.
				panic("faultinject: injected panic")
			}
			r, err := parseFaultRequest(line)
			devs := devices()
			if err == nil && (r.dev >= len(devs) || devs[r.dev] == nil) {
				err = fmt.Errorf("fault request: no device %d", r.dev)
			}
			var inj supervisor.FaultInjector
			if err == nil {
				var ok bool
				if inj, ok = devs[r.dev].(supervisor.FaultInjector); !ok {
					err = fmt.Errorf("fault request: device %d cannot inject faults", r.dev)
				}
			}
			if err == nil && r.unmapped {
				var ok bool
				if r.addr, ok = inj.UnmappedAddr(); !ok {
					err = fmt.Errorf("fault request: device %d has no unmapped address (no IOMMU)", r.dev)
				}
			}
			var before driver.DeviceStats
			if err == nil {
				before = inj.Stats()
				err = inj.InjectFault(r.port, r.fault, r.addr)
			}
			if err != nil {
				log.Error("fault injection", "err", err)
				continue
			}
			outcome, st := awaitOutcome(ctx, inj, before)
			fds, maps := countProc("/proc/self/fd"), countLines("/proc/self/maps")
			g := runtime.NumGoroutine()
			log.Warn("fault injection done", "dev", r.dev, "port", r.port, "fault", r.fault.String(), "outcome", outcome,
				"resets", st.Resets, "injected", st.Injected, "accepted", st.InjectedAccepted,
				"goroutines", g, "fds", fds, "maps", maps)
			report := fmt.Sprintf("%s resets=%d goroutines=%d fds=%d maps=%d addr=%#x\n", outcome, st.Resets, g, fds, maps, r.addr)
			done := fmt.Sprintf("%s.done.%d", path, st.Injected)
			if err := os.WriteFile(done, []byte(report), 0o644); err != nil {
				log.Error("fault injection", "err", err)
			}
		}
	}()
}

// faultWait bounds the wait for the device's answer to an injected fault.
const faultWait = 10 * time.Second

// awaitOutcome waits until the device has been reset (Stats takes the
// driver's lock, which recovery holds until bring-up is done, so a raised
// reset count means the device is up again) or has used the descriptor.
func awaitOutcome(ctx context.Context, inj supervisor.FaultInjector, before driver.DeviceStats) (string, driver.DeviceStats) {
	deadline := time.Now().Add(faultWait)
	for {
		st := inj.Stats()
		switch {
		case st.Resets > before.Resets:
			return "reset", st
		case st.InjectedAccepted > before.InjectedAccepted:
			return "accepted", st
		case time.Now().After(deadline) || ctx.Err() != nil:
			return "none", st
		}
		time.Sleep(time.Millisecond)
	}
}

func countProc(dir string) int {
	es, err := os.ReadDir(dir)
	if err != nil {
		return -1
	}
	return len(es)
}

func countLines(path string) int {
	f, err := os.Open(path)
	if err != nil {
		return -1
	}
	defer f.Close()
	n := 0
	for s := bufio.NewScanner(f); s.Scan(); {
		n++
	}
	return n
}
