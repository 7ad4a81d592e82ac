package qemu

import (
	"context"
	"os"
	"strconv"
	"testing"
	"time"
)

// EnvResetRounds names the environment variable that runs
// TestAgentResetDuringTransferSoak: that many rounds of
// TestAgentResetDuringTransfer's transfers and injected reset in one boot.
const EnvResetRounds = "VSERIAL_RESET_ROUNDS"

// defaultResetRounds is how many rounds the soak runs without it: one in
// CI, where TestAgentResetDuringTransfer runs the same round again. On
// 2026-12-03 a clean-clone CI run found a silent host→guest gap in round 3
// (1 round in about 20 under the full suite's load); with two busy loops on
// the host it came back in round 9 of 30, and a QEMU trace showed QEMU
// dropping a chardev read on each streaming port after the fault
// (TestAgentResetDuringTransfer's comment). Since the agent tells the
// clients of ports that were streaming toward the guest, 30 rounds under
// the same load found no gap, QEMU's drop being traced again in one of
// them (docs/reliability.md). VSERIAL_RESET_ROUNDS=30 runs more.
const defaultResetRounds = 1

// TestAgentResetDuringTransferSoak repeats the round of
// TestAgentResetDuringTransfer (three ports streaming 64 MiB, a device
// reset in the middle, every outcome checked) in one boot, stopping at the
// first failing round. An outcome that depends on where the reset lands
// (a receive buffer the device had filled but the driver had not taken
// yet, for one) shows up in a few rounds in thirty, where one round per
// boot rarely meets it. It runs defaultResetRounds rounds (CI: a round
// takes 10–20 s here), or $VSERIAL_RESET_ROUNDS: 25 passed in a row after
// the driver learnt to take the buffers filled before a reset, where 3 to
// 9 rounds had found a gap.
func TestAgentResetDuringTransferSoak(t *testing.T) {
	rounds := defaultResetRounds
	if v := os.Getenv(EnvResetRounds); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			t.Fatalf("%s=%q: want a positive number of rounds", EnvResetRounds, v)
		}
		rounds = n
	}
	const big = 64 << 20
	names := []string{"org.vserial.soak.a", "org.vserial.soak.b", "org.vserial.soak.c"}
	var qports []Port
	for i, n := range names {
		qports = append(qports, Port{Name: n, Nr: i + 1})
	}
	a := bootAgent(t, Options{Ports: qports, MaxPorts: 4, DisableLegacy: true, Files: []File{BuildFaultAgent(t)}}, names...)
	ctx, cancel := context.WithTimeout(t.Context(), time.Duration(rounds)*2*time.Minute)
	defer cancel()
	a.g.MustRun(t, "touch", FaultFile)
	for k := range rounds {
		seed := uint64(6000 + 10*k)
		ports := []resetXfer{
			{name: names[0], nr: 1, toGuest: big, toHost: big, seed: seed},
			{name: names[1], nr: 2, toGuest: big, seed: seed + 2},
			{name: names[2], nr: 3, toHost: big, seed: seed + 4},
		}
		t.Logf("round %d of %d", k+1, rounds)
		resetRound(ctx, t, a, ports, k+1)
		if t.Failed() {
			t.Fatalf("round %d of %d failed", k+1, rounds)
		}
	}
}
