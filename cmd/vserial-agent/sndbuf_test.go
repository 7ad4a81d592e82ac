package main

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeWmem points wmemDefaultPath at a file holding v for the test.
func fakeWmem(t *testing.T, v string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "wmem_default")
	if err := os.WriteFile(p, []byte(v), 0o644); err != nil {
		t.Fatal(err)
	}
	old := wmemDefaultPath
	wmemDefaultPath = p
	t.Cleanup(func() { wmemDefaultPath = old })
	return p
}

func fileValue(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func TestRaiseSendBufferRestores(t *testing.T) {
	p := fakeWmem(t, "212992\n")
	old, restore, err := raiseSendBuffer(4 << 20)
	if err != nil || old != 212992 {
		t.Fatalf("raise: old %d, %v; want 212992", old, err)
	}
	if got := fileValue(t, p); got != "4194304" {
		t.Fatalf("while raised: %s, want 4194304", got)
	}
	if err := restore(); err != nil {
		t.Fatal(err)
	}
	if got := fileValue(t, p); got != "212992" {
		t.Errorf("after restore: %s, want 212992", got)
	}
}

func TestRaiseSendBufferKeepsAnotherChange(t *testing.T) {
	p := fakeWmem(t, "212992\n")
	_, restore, err := raiseSendBuffer(1 << 20)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte("524288\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := restore(); err != nil {
		t.Fatal(err)
	}
	if got := fileValue(t, p); got != "524288" {
		t.Errorf("restore overwrote a value set meanwhile: %s, want 524288", got)
	}
}

func TestRaiseSendBufferRefusesGarbage(t *testing.T) {
	p := fakeWmem(t, "lots\n")
	if _, _, err := raiseSendBuffer(1 << 20); err == nil {
		t.Fatal("raised over a value that is not a number")
	}
	if got := fileValue(t, p); got != "lots" {
		t.Errorf("the file was written: %q", got)
	}
	wmemDefaultPath = filepath.Join(t.TempDir(), "missing")
	if _, _, err := raiseSendBuffer(1 << 20); err == nil {
		t.Fatal("no error for a missing sysctl")
	}
}

func TestParseClientSendBuffer(t *testing.T) {
	for _, c := range []struct {
		in   string
		want int
	}{{"0", 0}, {"4MiB", 4 << 20}, {"256K", 256 << 10}, {"64M", 64 << 20}, {"1048576", 1 << 20}} {
		cfg, err := parseRun([]string{"--client-send-buffer", c.in}, io.Discard)
		if err != nil || cfg.ClientSendBuffer != c.want {
			t.Errorf("--client-send-buffer %s: %d, %v; want %d", c.in, cfg.ClientSendBuffer, err, c.want)
		}
	}
	cfg, err := parseRun(nil, io.Discard)
	if err != nil || cfg.ClientSendBuffer != 0 {
		t.Errorf("default: %d, %v; want 0 (leave the system's setting)", cfg.ClientSendBuffer, err)
	}
	for _, bad := range []string{"255K", "65M", "-1", "4MB", "lots", ""} {
		if _, err := parseRun([]string{"--client-send-buffer", bad}, io.Discard); err == nil {
			t.Errorf("--client-send-buffer %q accepted", bad)
		}
	}
}

func TestRunRaisesAndRestoresSendBuffer(t *testing.T) {
	p := fakeWmem(t, "212992\n")
	sys := shortTempDir(t)
	fakeFunction(t, sys, "0000:00:03.0", "0x1af4", "0x1043", "0x1100", "")
	h := startRun(t, sys, []string{"--client-send-buffer", "2MiB"}, nil)
	h.device(0)
	if got := fileValue(t, p); got != "2097152" {
		t.Fatalf("while running: %s, want 2097152", got)
	}
	h.cancel()
	if code := h.wait(); code != exitOK {
		t.Fatalf("exit %d", code)
	}
	if got := fileValue(t, p); got != "212992" {
		t.Errorf("after exit: %s, want 212992", got)
	}
	if !strings.Contains(h.logs.String(), "from=212992 to=2097152") {
		t.Errorf("no log line for the change:\n%s", h.logs.String())
	}
}
