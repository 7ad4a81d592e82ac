package qemu

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Hugepage footprint of a uio agent on QEMU's device, by docs/memory.md:
// data queues of 128 entries, control queues of 32; the DMA bytes are
// rings for every port id the agent serves, the control buffers, 128
// receive buffers of 4 KiB per port present and 32 transmit buffers of
// 32 KiB per port that has sent.
const (
	memControlBytes = 2*(16*32+(6+2*32+2)+(6+8*32+2)) + 32*4096 + 32*8 // 133,024
	memSlotBytes    = 2 * (16*128 + (6 + 2*128 + 2) + (6 + 8*128 + 2)) // 6,688: a port id's two rings
	memRxBytes      = 128 * 4096                                       // a present port
	memTxBytes      = 32 * 32 << 10                                    // a port that sent
	hugepageKiB     = 2048
)

// memPages is how many 2 MiB hugepages hold n bytes of DMA memory.
func memPages(n int) int64 { return int64((n + hugepageKiB<<10 - 1) / (hugepageKiB << 10)) }

// TestAgentHugepageFootprint reads the hugepage pool (nr_hugepages,
// /proc/meminfo) and the agent's HugetlbPages (/proc/PID/status) before,
// while and after an agent runs on a device with QEMU's largest max_ports
// (511) and 8 ports: the agent serves the default 64 port ids, its
// footprint is what docs/memory.md says, and after it exits the pool is
// back where it started (the guest boots with none, so the agent reserves
// every page it uses and must give every one back).
func TestAgentHugepageFootprint(t *testing.T) {
	t.Parallel()
	var ports []Port
	var names []string
	for i := range 8 {
		n := fmt.Sprintf("org.vserial.mem.%d", i)
		ports = append(ports, Port{Name: n, Nr: i + 1})
		names = append(names, n)
	}
	g := Boot(t, Options{Ports: ports, MaxPorts: 511, Files: []File{BuildAgent(t)}})
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	const nrFile = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"
	pool := func() (nr, total, free int) {
		t.Helper()
		out, err := g.Run(ctx, "cat", nrFile)
		if err != nil {
			t.Fatal(err)
		}
		if nr, err = strconv.Atoi(strings.TrimSpace(out)); err != nil {
			t.Fatalf("%s: %q", nrFile, out)
		}
		total, err1 := meminfoValue(ctx, g, "HugePages_Total")
		free, err2 := meminfoValue(ctx, g, "HugePages_Free")
		if err1 != nil || err2 != nil {
			t.Fatalf("meminfo: %v %v", err1, err2)
		}
		return nr, total, free
	}
	nr0, total0, free0 := pool()
	t.Logf("before: nr_hugepages %d, HugePages_Total %d, HugePages_Free %d", nr0, total0, free0)

	a := &runningAgent{g: g}
	p, err := a.start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	a.proc = p
	t.Cleanup(func() {
		if !a.stopd && t.Failed() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_ = p.Signal(ctx, 15)
			out, _ := p.Wait(ctx)
			t.Logf("agent log:\n%s", out)
		}
	})
	for _, n := range names {
		if err := g.WaitPath(ctx, AgentSocket(n), 60*time.Second); err != nil {
			t.Fatalf("%s not published: %v", n, err)
		}
	}
	check := func(when string, bytes int) {
		t.Helper()
		want := memPages(bytes)
		got, err := procStatusKiB(ctx, g, p.Pid, "HugetlbPages")
		if err != nil {
			t.Fatal(err)
		}
		nr, total, free := pool()
		t.Logf("%s: agent HugetlbPages %d kB (%d pages) for %d DMA bytes by docs/memory.md; nr_hugepages %d, HugePages_Total %d, HugePages_Free %d",
			when, got, got/hugepageKiB, bytes, nr, total, free)
		if got != want*hugepageKiB {
			t.Errorf("%s: the agent maps %d kB of hugepages, docs/memory.md says %d pages (%d bytes)", when, got, want, bytes)
		}
		if used := int64(total - free); used < want {
			t.Errorf("%s: %d hugepages in use in the guest, fewer than the agent's %d", when, used, want)
		}
	}
	idle := memControlBytes + 64*memSlotBytes + len(names)*memRxBytes
	check("idle, 8 ports", idle)

	// Two ports send: each gets its transmit buffers.
	for i, n := range names[:2] {
		if err := both(ctx, t, g, g.DialPort(t, n), AgentSocket(n), 64<<10, uint64(100+i)); err != nil {
			t.Fatal(err)
		}
	}
	check("after 2 ports sent", idle+2*memTxBytes)

	out, err := a.stop(ctx)
	if err != nil {
		t.Fatalf("agent exit: %v\n%s", err, out)
	}
	nr, total, free := pool()
	t.Logf("after exit: nr_hugepages %d, HugePages_Total %d, HugePages_Free %d", nr, total, free)
	if nr != nr0 || total != total0 || free != free0 {
		t.Errorf("hugepage pool after the agent exited: nr_hugepages %d, total %d, free %d; before it started %d, %d, %d\nagent log:\n%s",
			nr, total, free, nr0, total0, free0, out)
	}
	if !strings.Contains(out, "hugepages given back") {
		t.Errorf("the agent did not log the hugepages it gave back:\n%s", out)
	}
}

// TestAgentWarnsOfHotplugMemory boots a guest with a hot-pluggable DIMM
// (a pc-dimm in a memory slot: ACPI memory device PNP0C80) and checks that
// the agent, taking the console through uio, warns at start that DMA pages
// can be migrated, with that reason (docs/memory.md, page migration).
func TestAgentWarnsOfHotplugMemory(t *testing.T) {
	t.Parallel()
	const name = "org.vserial.dimm"
	a := bootAgentArgs(t, Options{
		Ports:     []Port{{Name: name}},
		Memory:    "512M,slots=2,maxmem=1G",
		ExtraArgs: []string{"-object", "memory-backend-ram,id=dimm0,size=128M", "-device", "pc-dimm,id=dimm0d,memdev=dimm0"},
	}, []string{"--bind", "uio"}, name)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	acpi, _ := a.g.Run(ctx, "ls", "/sys/bus/acpi/devices")
	out, err := a.stop(ctx)
	if err != nil {
		t.Fatalf("agent exit: %v\n%s", err, out)
	}
	var warned string
	for line := range strings.Lines(out) {
		if strings.Contains(line, "level=WARN") && strings.Contains(line, "DMA pages can be migrated") {
			warned += line
		}
	}
	t.Logf("the agent's migration warnings:\n%s", warned)
	if !strings.Contains(warned, "ACPI memory device(s) (DIMM slots for memory hot-plug)") {
		t.Errorf("no warning about the hot-pluggable DIMM; ACPI devices in the guest: %s\nagent log:\n%s", strings.Join(strings.Fields(acpi), " "), out)
	}
}
