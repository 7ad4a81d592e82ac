package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"github.com/vserial/vserial/driver"
)

func TestParseRunDefaults(t *testing.T) {
	cfg, err := parseRun(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Agent.SocketDir != "/run/vserial" || cfg.Agent.SocketMode != 0o660 || cfg.Agent.ControlMode != 0o600 || cfg.Agent.DirMode != 0o755 {
		t.Errorf("agent config %+v", cfg.Agent)
	}
	if cfg.Bind != bindAuto || cfg.Ring != driver.RingAuto || cfg.MaxPorts != 64 || cfg.DMABudget != 133<<20 || cfg.LogLevel != slog.LevelInfo || cfg.Sysfs != "/sys" || len(cfg.Devices) != 0 {
		t.Errorf("config %+v", cfg)
	}
}

func TestParseRunValues(t *testing.T) {
	cfg, err := parseRun([]string{
		"--socket-dir", "/tmp/x", "--socket-mode", "600", "--control-mode", "0660", "--dir-mode=0o700",
		"--device", "00:03.0", "--device", "0000:00:04.0",
		"--bind", "uio", "--max-ports", "8", "--log-level", "DEBUG", "--sysfs", "/tmp/sys", "--dma-budget", "24M", "--ring", "split",
	}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Agent.SocketDir != "/tmp/x" || cfg.Agent.SocketMode != 0o600 || cfg.Agent.ControlMode != 0o660 || cfg.Agent.DirMode != 0o700 {
		t.Errorf("agent config %+v", cfg.Agent)
	}
	if strings.Join(cfg.Devices, ",") != "0000:00:03.0,0000:00:04.0" {
		t.Errorf("devices %v: want canonical addresses in order", cfg.Devices)
	}
	if cfg.MaxPorts != 8 || cfg.DMABudget != 24<<20 || cfg.LogLevel != slog.LevelDebug || cfg.Sysfs != "/tmp/sys" || cfg.Ring != driver.RingSplit {
		t.Errorf("config %+v", cfg)
	}
}

func TestParseRunPoll(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{nil, "adaptive"},
		{[]string{"--poll", "adaptive"}, "adaptive"},
		{[]string{"--poll", "off"}, "off"},
		{[]string{"--poll", "200us"}, "200µs"},
	} {
		cfg, err := parseRun(c.args, io.Discard)
		if err != nil || cfg.Poll.String() != c.want {
			t.Errorf("%v: poll %v, %v; want %s", c.args, cfg.Poll, err, c.want)
		}
	}
}

func TestParseRunNice(t *testing.T) {
	auto := defaultNice
	if runtime.NumCPU() > 1 {
		auto = 0
	}
	for _, c := range []struct {
		args []string
		want int
	}{
		{nil, auto},
		{[]string{"--nice", "auto"}, auto},
		{[]string{"--nice", "0"}, 0},
		{[]string{"--nice", "-20"}, -20},
		{[]string{"--nice", "19"}, 19},
	} {
		cfg, err := parseRun(c.args, io.Discard)
		if err != nil || cfg.Nice != c.want {
			t.Errorf("%v: nice %d, %v; want %d", c.args, cfg.Nice, err, c.want)
		}
	}
}

func TestParseNiceAuto(t *testing.T) {
	for _, c := range []struct {
		cpus int
		want int
	}{{1, defaultNice}, {2, 0}, {8, 0}} {
		if got, err := parseNice("auto", c.cpus); err != nil || got != c.want {
			t.Errorf("auto on %d CPUs: %d, %v; want %d", c.cpus, got, err, c.want)
		}
	}
}

func TestParseRunConsole(t *testing.T) {
	cfg, err := parseRun(nil, io.Discard)
	if err != nil || cfg.Agent.Console.PTY || cfg.Agent.Console.Exec != nil {
		t.Fatalf("default console config %+v, %v: want plain sockets", cfg.Agent.Console, err)
	}
	cfg, err = parseRun([]string{"--console-pty"}, io.Discard)
	if err != nil || !cfg.Agent.Console.PTY || cfg.Agent.Console.Exec != nil {
		t.Fatalf("--console-pty: %+v, %v", cfg.Agent.Console, err)
	}
	cfg, err = parseRun([]string{"--console-exec", "/bin/sh  -l"}, io.Discard)
	if err != nil || !cfg.Agent.Console.PTY || strings.Join(cfg.Agent.Console.Exec, "|") != "/bin/sh|-l" {
		t.Fatalf("--console-exec: %+v, %v", cfg.Agent.Console, err)
	}
}

func TestParseRunRejects(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string // in the message
	}{
		{[]string{"--socket-dir", ""}, "--socket-dir: empty"},
		{[]string{"--socket-mode", "rw"}, "not an octal permission"},
		{[]string{"--socket-mode", "0999"}, "not an octal permission"},
		{[]string{"--socket-mode", "4660"}, "at most 0777"},
		{[]string{"--socket-mode", "0460"}, "owner needs at least 0600"},
		{[]string{"--control-mode", "0400"}, "--control-mode \"0400\": the owner needs at least 0600"},
		{[]string{"--control-mode", "1777"}, "at most 0777"},
		{[]string{"--dir-mode", "0600"}, "owner needs at least 0700"},
		{[]string{"--dir-mode", ""}, "not an octal permission"},
		{[]string{"--device", "nonsense"}, `--device "nonsense": not a PCI address`},
		{[]string{"--device", "0000:00:20.0"}, "not a PCI address"},
		{[]string{"--device", "00:03.0", "--device", "0000:00:03.0"}, "given twice"},
		{[]string{"--bind", "kernel"}, `--bind "kernel": want uio, vfio or auto`},
		{[]string{"--ring", "ring"}, `--ring "ring": want auto, split or packed`},
		{[]string{"--max-ports", "-1"}, "--max-ports -1"},
		{[]string{"--max-ports", "40000"}, "--max-ports 40000"},
		{[]string{"--max-ports", "many"}, "invalid argument"},
		{[]string{"--dma-budget", "12X"}, `--dma-budget "12X": want a byte count`},
		{[]string{"--dma-budget", "-1M"}, "want a byte count"},
		{[]string{"--dma-budget", "1023K"}, "want 1MiB to 1024GiB"},
		{[]string{"--dma-budget", "2000G"}, "want 1MiB to 1024GiB"},
		{[]string{"--dma-budget", "99999999999999999999"}, "want a byte count"},
		{[]string{"--log-level", "loud"}, `--log-level "loud"`},
		{[]string{"--poll", "sometimes"}, `--poll "sometimes": want adaptive, off or a duration`},
		{[]string{"--poll", "1h"}, "at most 10ms"},
		{[]string{"--poll", "-5us"}, "above 0"},
		{[]string{"--nice", "-21"}, `--nice "-21": want auto or -20 to 19`},
		{[]string{"--nice", "20"}, "want auto or -20 to 19"},
		{[]string{"--nice", "low"}, "want auto or -20 to 19"},
		{[]string{"--sysfs", ""}, "--sysfs: empty"},
		{[]string{"--frobnicate"}, "unknown flag"},
		{[]string{"--console-exec", " "}, "--console-exec: empty command"},
		{[]string{"--console-exec", "sh -l"}, "absolute path"},
		{[]string{"extra"}, `unexpected argument "extra"`},
	} {
		_, err := parseRun(c.args, io.Discard)
		var ue *usageError
		if !errors.As(err, &ue) {
			t.Errorf("%v: err %v, want a usage error", c.args, err)
			continue
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: message %q does not say %q", c.args, err, c.want)
		}
	}
}

func TestParseRunBind(t *testing.T) {
	for _, b := range []string{bindUIO, bindVFIO, bindAuto} {
		cfg, err := parseRun([]string{"--bind", b}, io.Discard)
		if err != nil || cfg.Bind != b {
			t.Errorf("--bind %s: Bind %q, %v", b, cfg.Bind, err)
		}
	}
	// The default leaves the choice to chooseBind, function by function.
	if cfg, err := parseRun(nil, io.Discard); err != nil || cfg.Bind != bindAuto {
		t.Errorf("default Bind %q, %v; want auto", cfg.Bind, err)
	}
}

func TestParseRunHelp(t *testing.T) {
	var out bytes.Buffer
	_, err := parseRun([]string{"--help"}, &out)
	if !errors.Is(err, pflag.ErrHelp) {
		t.Fatalf("--help: %v", err)
	}
	for _, want := range []string{"--socket-dir", "--device", "--bind", "--max-ports", "--log-level"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("run help lacks %s", want)
		}
	}
	if strings.Contains(out.String(), "--sysfs") {
		t.Error("run help shows the hidden --sysfs flag")
	}
}

func TestParseList(t *testing.T) {
	cfg, err := parseList([]string{"--json", "--socket-dir", "/tmp/d"}, io.Discard)
	if err != nil || !cfg.JSON || cfg.SocketDir != "/tmp/d" || cfg.Sysfs != "/sys" {
		t.Fatalf("parseList = %+v, %v", cfg, err)
	}
	var ue *usageError
	if _, err := parseList([]string{"--jsn"}, io.Discard); !errors.As(err, &ue) {
		t.Errorf("unknown flag: %v, want a usage error", err)
	}
}

func TestExitCodes(t *testing.T) {
	for _, c := range []struct {
		args []string
		code int
		out  string // in stdout+stderr
	}{
		{nil, exitUsage, "Usage:"},
		{[]string{"--help"}, exitOK, "Exit codes:"},
		{[]string{"help", "run"}, exitOK, "--socket-mode"},
		{[]string{"list", "-h"}, exitOK, "--json"},
		{[]string{"frob"}, exitUsage, `unknown command "frob"`},
		{[]string{"run", "--log-level", "x"}, exitUsage, "Run 'vserial-agent run --help'"},
		{[]string{"run", "--bind=kernel"}, exitUsage, "want uio, vfio or auto"},
	} {
		var out bytes.Buffer
		code := realMain(context.Background(), c.args, &out, &out, nil)
		if code != c.code || !strings.Contains(out.String(), c.out) {
			t.Errorf("%v: exit %d, output %q; want exit %d and %q", c.args, code, out.String(), c.code, c.out)
		}
	}
	// The help documents every exit code the command uses.
	for _, code := range []int{exitOK, exitFailure, exitUsage} {
		if !strings.Contains(mainUsage, "\n  "+string(rune('0'+code))+"  ") {
			t.Errorf("exit code %d is not documented in the help", code)
		}
	}
}

func TestParseModeValues(t *testing.T) {
	for in, want := range map[string]fs.FileMode{"0660": 0o660, "660": 0o660, "0o640": 0o640, "777": 0o777} {
		got, err := parseMode("run", "--socket-mode", in, 0o600, 0o660)
		if err != nil || got != want {
			t.Errorf("parseMode(%q) = %#o, %v; want %#o", in, got, err, want)
		}
	}
}

func TestParseRunShutdownFlush(t *testing.T) {
	for _, c := range []struct {
		args []string
		want time.Duration // as driver.Config.CloseFlush takes it
	}{
		{nil, 2 * time.Second},
		{[]string{"--shutdown-flush", "500ms"}, 500 * time.Millisecond},
		{[]string{"--shutdown-flush", "0"}, -1},
	} {
		cfg, err := parseRun(c.args, io.Discard)
		if err != nil || cfg.ShutdownFlush != c.want {
			t.Errorf("%v: flush %v, %v; want %v", c.args, cfg.ShutdownFlush, err, c.want)
		}
	}
	for _, bad := range []string{"-1s", "31s", "soon"} {
		if _, err := parseRun([]string{"--shutdown-flush", bad}, io.Discard); err == nil {
			t.Errorf("--shutdown-flush %s accepted", bad)
		}
	}
}

func TestParseRunConsoleLimits(t *testing.T) {
	cfg, err := parseRun(nil, io.Discard)
	if err != nil || cfg.Agent.Console.MaxPerDevice != 4 || cfg.Agent.Console.Env != nil {
		t.Fatalf("defaults: max %d env %v (%v)", cfg.Agent.Console.MaxPerDevice, cfg.Agent.Console.Env, err)
	}
	cfg, err = parseRun([]string{"--console-max", "2", "--console-env", "LANG=C.UTF-8", "--console-env", "TERM=linux"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	env := strings.Join(cfg.Agent.Console.Env, " ")
	if cfg.Agent.Console.MaxPerDevice != 2 || !strings.Contains(env, "LANG=C.UTF-8") || !strings.Contains(env, "TERM=linux") || strings.Contains(env, "vt220") || !strings.Contains(env, "PATH=") {
		t.Errorf("max %d env %q", cfg.Agent.Console.MaxPerDevice, env)
	}
	for _, bad := range [][]string{{"--console-max", "0"}, {"--console-max", "65"}, {"--console-env", "NOEQUALS"}, {"--console-env", "=x"}} {
		if _, err := parseRun(bad, io.Discard); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
}

func TestBytesRoundTrip(t *testing.T) {
	for _, c := range []struct {
		in   string
		want int
	}{{"1048576", 1 << 20}, {"1024K", 1 << 20}, {"1536KiB", 1536 << 10}, {"133MiB", 133 << 20}, {"2G", 2 << 30}} {
		got, err := parseBytes(c.in, minDMABudget, maxDMABudget)
		if err != nil || got != c.want {
			t.Errorf("parseBytes(%q) = %d, %v; want %d", c.in, got, err, c.want)
		}
		if back, err := parseBytes(formatBytes(got), minDMABudget, maxDMABudget); err != nil || back != got {
			t.Errorf("formatBytes(%d) = %q reads back as %d, %v", got, formatBytes(got), back, err)
		}
	}
}

// run's flags reach vserial.Options with run's meanings: --max-ports 0 is
// "as many as the device offers" (negative in Options), --shutdown-flush 0
// "no wait" (negative), and the emergency lines name vserial-agent.
func TestRunOptions(t *testing.T) {
	cfg, err := parseRun(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	o := cfg.options(nil)
	if o.MaxPorts != 64 || o.Ring != "auto" || o.Poll != "adaptive" || o.ShutdownFlush != 2*time.Second || o.SocketDir != "/run/vserial" ||
		o.SocketMode != 0o660 || o.ControlMode != 0o600 || o.DirMode != 0o755 || o.Program != "vserial-agent" || o.Sysfs != "/sys" || o.Bind != bindAuto {
		t.Errorf("default options %+v", o)
	}
	cfg, err = parseRun([]string{"--max-ports", "0", "--shutdown-flush", "0", "--poll", "200us", "--ring", "split", "--dma-budget", "24M",
		"--wait-devices", "--device", "00:03.0", "--port", "org.x socket=y", "--console-pty"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	o = cfg.options(nil)
	if o.MaxPorts >= 0 || o.ShutdownFlush >= 0 || o.Poll != "200µs" || o.Ring != "split" || o.DMABudget != 24<<20 || !o.WaitDevices ||
		strings.Join(o.Devices, ",") != "0000:00:03.0" || o.Ports["org.x"].Socket != "y" || !o.Console.PTY {
		t.Errorf("options %+v", o)
	}
}
