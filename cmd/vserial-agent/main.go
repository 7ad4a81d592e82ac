package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/vserial/vserial/internal/guard"
	"github.com/vserial/vserial/internal/supervisor"
)

func main() {
	// GOMAXPROCS stays Go's default, the CPU count. On one CPU that is one
	// P, and the data-plane loop then sleeps parked in Go's poller, so that
	// the runtime's sysmon sleeps too (pump/wait.go); a second P made the
	// loop's wake-ups and yields start another thread to take it. Builds
	// before this raised it to 2 for the loop's ordinary system calls,
	// which are raw now.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	go func() {
		defer guard.Recover()
		// After the first signal, a second one kills the process the
		// default way, in case shutdown hangs.
		<-ctx.Done()
		stop()
	}()
	os.Exit(realMain(ctx, os.Args[1:], os.Stdout, os.Stderr, nil))
}

// realMain runs one command and returns the exit code. ctx ends at
// SIGTERM/SIGINT. open opens one device for run (nil: the real devices;
// tests pass fakes).
func realMain(ctx context.Context, args []string, stdout, stderr io.Writer, open supervisor.Opener) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, mainUsage)
		return exitUsage
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "-h", "--help", "help":
		if len(rest) > 0 && (rest[0] == "run" || rest[0] == "list" || rest[0] == "events") {
			return realMain(ctx, []string{rest[0], "--help"}, stdout, stderr, open)
		}
		fmt.Fprint(stdout, mainUsage)
		return exitOK
	case "--version", "version":
		return printVersion(rest, stdout, stderr)
	case "run":
		cfg, err := parseRun(rest, stdout)
		if err != nil {
			return fail(stderr, cmd, err)
		}
		if cfg.CPUProfile != "" {
			f, err := os.Create(cfg.CPUProfile)
			if err != nil {
				return fail(stderr, cmd, err)
			}
			if err := pprof.StartCPUProfile(f); err != nil {
				f.Close()
				return fail(stderr, cmd, err)
			}
			defer func() {
				pprof.StopCPUProfile()
				f.Close()
			}()
		}
		return runAgent(ctx, cfg, stderr, open)
	case "list":
		cfg, err := parseList(rest, stdout)
		if err != nil {
			return fail(stderr, cmd, err)
		}
		return list(ctx, cfg, stdout, stderr)
	case "udev-env":
		return udevEnv(rest, stdout, stderr)
	case "events":
		cfg, err := parseEvents(rest, stdout)
		if err != nil {
			return fail(stderr, cmd, err)
		}
		return events(ctx, cfg, stdout, stderr)
	}
	fmt.Fprintf(stderr, "vserial-agent: unknown command %q\n\n%s", cmd, mainUsage)
	return exitUsage
}

// fail reports an error from parsing a command's flags and returns its exit
// code.
func fail(stderr io.Writer, cmd string, err error) int {
	var ue *usageError
	switch {
	case errors.Is(err, pflag.ErrHelp):
		return exitOK
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "vserial-agent %s: %v\nRun 'vserial-agent %s --help' for usage.\n", cmd, err, cmd)
		return exitUsage
	}
	fmt.Fprintf(stderr, "vserial-agent %s: %v\n", cmd, err)
	return exitFailure
}
