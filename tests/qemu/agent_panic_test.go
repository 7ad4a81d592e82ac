package qemu

import (
	"context"
	"errors"
	"fmt"
	"path"
	"strings"
	"testing"
	"time"
)

// TestAgentPanicLastGasp makes the agent panic in a goroutine other than
// run's (the faultinject build panics in its injection goroutine on the
// request "panic"). Go would kill the process before any other goroutine's
// deferred recover runs; internal/guard gives every goroutine the agent
// starts the same last words: the host sees "vserial-agent: fatal: panic:
// ..." on the console through the emergency channel, the log has the
// panic and its stack, and the process dies of the panic (exit status 2).
func TestAgentPanicLastGasp(t *testing.T) {
	t.Parallel()
	const con = "org.vserial.console"
	opts := Options{Ports: []Port{{Console: true, Name: con}, {Name: "org.vserial.plain", Nr: 1}}, MaxPorts: 4}
	opts.Files = append(opts.Files, BuildFaultAgent(t))
	g := Boot(t, opts)
	conn := g.DialPort(t, con)
	tap := tapConsole(conn)
	addr := path.Base(findVirtioConsole(t, g))
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()

	a := startConsoleAgent(ctx, t, g)
	if _, err := tap.waitFor(ctx, 0, "vserial-agent: starting on "+addr+"\n"); err != nil {
		t.Fatalf("start line: %v", err)
	}
	a.waitList(ctx, t, "the plain port published", func(l agentList) bool {
		_, ok := l.byName("org.vserial.plain")
		return ok
	})
	g.MustRun(t, "touch", FaultFile)
	if _, err := g.Run(ctx, "write", FaultFile, fmt.Sprintf("%-40s\n", "panic")); err != nil {
		t.Fatal(err)
	}
	from := tap.Len()
	if err := a.proc.Signal(ctx, 10); err != nil { // SIGUSR1
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, time.Minute)
	defer wcancel()
	if _, err := tap.waitFor(wctx, from, "vserial-agent: fatal: panic: faultinject: injected panic\n"); err != nil {
		t.Fatalf("no last gasp on the console after a panic in another goroutine: %v", err)
	}
	a.stopd = true
	log, err := a.proc.Wait(ctx)
	var ee *ExitError
	if !errors.As(err, &ee) || ee.Code != 2 {
		t.Errorf("vserial-agent after the panic: %v, want exit status 2 (Go's for a panic)", err)
	}
	if ee != nil {
		log = ee.Output
	}
	if !hasLogLine(log, "msg=panic", "injected panic", "startFaultInjection") {
		t.Errorf("the log has no panic line with the stack of the panicking goroutine:\n%s", log)
	}
	if !strings.Contains(log, "panic: faultinject: injected panic") {
		t.Errorf("the runtime's own panic report is missing:\n%s", log)
	}
}
