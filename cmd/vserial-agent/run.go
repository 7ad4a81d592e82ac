package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"

	"github.com/vserial/vserial/agent"
	"github.com/vserial/vserial/internal/devopen"
	"github.com/vserial/vserial/internal/guard"
	"github.com/vserial/vserial/pciscan"
)

// runAgent is `vserial-agent run`: it opens the functions, publishes their
// ports until ctx ends (SIGTERM/SIGINT) or every device stopped, then shuts
// down: the agent first (clients see EOF, the host sees PORT_OPEN 0), the
// devices after.
func runAgent(ctx context.Context, cfg runConfig, stderr io.Writer, open deviceOpener) int {
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: cfg.LogLevel}))
	notify, err := newNotifier()
	if err != nil {
		// Not fatal: the supervisor will time the start out and say so.
		log.Warn("readiness notification disabled", "err", err)
	}
	failed := func(msg string, err error) int {
		log.Error(msg, "err", err)
		if nerr := notify.send("STATUS=" + msg + ": " + err.Error()); nerr != nil {
			log.Warn("readiness notification failed", "err", nerr)
		}
		return exitFailure
	}
	fns, err := selectFunctions(cfg, log)
	if err != nil {
		return failed("no device to drive", err)
	}
	cfg.Agent.Logger = log
	a, err := agent.New(cfg.Agent)
	if err != nil {
		return failed("cannot start the agent", err)
	}
	ctl, err := a.ListenControl()
	if err != nil {
		a.Close()
		return failed("cannot create the control socket", err)
	}
	served := make(chan error, 1)
	go func() {
		defer guard.Recover()
		served <- a.ServeControl(ctl)
	}()

	var devs []device
	var addrs []string
	// The last gasp: if anything panics, in this goroutine or any other
	// the agent started, the host hears why (internal/guard).
	words := &lastWords{log: log}
	guard.SetHandler(words.panicked)
	defer guard.SetHandler(nil)
	defer guard.Recover()
	shutdown := func() {
		a.Close()
		if err := <-served; err != nil && !errors.Is(err, agent.ErrClosed) {
			log.Warn("control socket", "err", err)
		}
		for i, d := range devs {
			if err := d.Close(); err != nil {
				log.Error("closing device", "pci", fns[i].Addr, "err", err)
			}
		}
	}
	for i, f := range fns {
		d, err := open(ctx, deviceSpec{
			Index:         i,
			Function:      f,
			Explicit:      len(cfg.Devices) > 0,
			Bind:          cfg.Bind,
			MaxPorts:      cfg.MaxPorts,
			DMABudget:     cfg.DMABudget,
			Ring:          cfg.Ring,
			Poll:          cfg.Poll,
			ShutdownFlush: cfg.ShutdownFlush,
			Sysfs:         cfg.Sysfs,
			Logger:        log.With("pci", f.Addr, "dev", i),
			Report:        func(ev agent.DeviceEvent) { reportDevice(a, ev, log) },
		})
		if err != nil {
			if ctx.Err() != nil {
				shutdown()
				log.Info("interrupted while opening devices", "pci", f.Addr, "err", err)
				return exitOK
			}
			for j, d := range devs {
				emergencyLine(d, addrs[j], log, fmt.Sprintf("fatal: cannot open device %s: %v", f.Addr, err))
			}
			shutdown()
			return failed("cannot open device "+f.Addr, err)
		}
		devs = append(devs, d)
		addrs = append(addrs, f.Addr)
		words.add(d, f.Addr)
		log.Info("device opened", "pci", f.Addr, "dev", i)
		// Before any port is published: the host sees the agent coming up
		// even when nothing else works later.
		emergencyLine(d, f.Addr, log, "starting on "+f.Addr)
	}

	startFaultInjection(ctx, devs, log)

	// The ports present at start are published first, device by device in
	// index order and by id within a device, so a name two devices share
	// goes to the lower device index (the other is served as
	// vport<D>p<ID>). Then the agent is ready. Each device then feeds the
	// ports that arrive later; its first delivery of a start port is the
	// one just published and is skipped.
	started := make([]map[agent.Port]bool, len(devs))
	nPresent := 0
	for i, d := range devs {
		started[i] = map[agent.Port]bool{}
		for _, p := range d.Present() {
			started[i][p] = true
			nPresent++
			if err := a.AddPort(i, p); err != nil {
				log.Error("cannot publish port", "pci", fns[i].Addr, "dev", i, "port", p.ID(), "err", err)
			}
		}
	}
	log.Info("ready", "devices", len(devs), "ports", nPresent, "socket_dir", a.Dir())
	if err := notify.send("READY=1", fmt.Sprintf("STATUS=serving %d ports of %d devices in %s", nPresent, len(devs), a.Dir())); err != nil {
		log.Warn("readiness notification failed", "err", err)
	}
	stopped := make(chan int, len(devs))
	for i, d := range devs {
		go func() {
			defer guard.Recover()
			skip := started[i]
			for p := range d.Ports() {
				if skip[p] {
					delete(skip, p)
					continue
				}
				if err := a.AddPort(i, p); err != nil && !errors.Is(err, agent.ErrClosed) {
					log.Error("cannot publish port", "pci", fns[i].Addr, "dev", i, "port", p.ID(), "err", err)
				}
			}
			stopped <- i
		}()
	}

	code := exitOK
	running := len(devs)
	for running > 0 && ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case i := <-stopped:
			running--
			err := devs[i].Err()
			log.Error("device stopped", "pci", fns[i].Addr, "dev", i, "err", err)
			why := "stopped"
			if err != nil {
				why = err.Error()
			}
			reportDevice(a, agent.DeviceEvent{Kind: agent.EventDeviceFailed, Device: i, Reason: why}, log)
			emergencyLine(devs[i], fns[i].Addr, log, fmt.Sprintf("fatal: device %s stopped: %v", fns[i].Addr, err))
		}
	}
	if running == 0 {
		code = exitFailure
		log.Error("every device stopped; exiting")
		for i, d := range devs {
			emergencyLine(d, addrs[i], log, "fatal: every device stopped; exiting")
		}
	} else {
		log.Info("shutting down")
	}
	if err := notify.send("STOPPING=1", "STATUS=shutting down"); err != nil {
		log.Warn("readiness notification failed", "err", err)
	}
	shutdown()
	// Close ends every Ports channel; wait for the feeders.
	for ; running > 0; running-- {
		<-stopped
	}
	log.Info("stopped", "exit_code", code)
	return code
}

// reportDevice puts a device's event on the agent's event stream.
func reportDevice(a *agent.Agent, ev agent.DeviceEvent, log *slog.Logger) {
	if err := a.ReportDevice(ev); err != nil && !errors.Is(err, agent.ErrClosed) {
		log.Warn("device event not reported", "dev", ev.Device, "event", ev.Kind, "err", err)
	}
}

// selectFunctions returns the functions to drive: those named with
// --device, or every virtio-console function no driver holds.
func selectFunctions(cfg runConfig, log *slog.Logger) ([]pciscan.Function, error) {
	return devopen.Select(cfg.Sysfs, cfg.Devices, log)
}

// maxEmergencyLine bounds a line written through the emergency channel: each
// byte is a register write the host handles on its own.
const maxEmergencyLine = 240

// emergencyLine writes "vserial-agent: MSG\n" through d's emergency channel
// (VIRTIO_CONSOLE_F_EMERG_WRITE: QEMU puts it on the first virtconsole,
// usually port 0), for the host to see while no port is up or after the
// device failed. Control characters in msg become spaces and long messages
// are cut, so one call is one line. Best effort: a device without the
// channel is logged at debug level.
func emergencyLine(d device, addr string, log *slog.Logger, msg string) {
	writeLine(d.EmergencyWrite, addr, log, msg)
}

func writeLine(write func([]byte) error, addr string, log *slog.Logger, msg string) {
	b := []byte("vserial-agent: ")
	for _, c := range []byte(msg) {
		if c < 0x20 || c == 0x7f {
			c = ' '
		}
		b = append(b, c)
	}
	if len(b) > maxEmergencyLine-1 {
		b = append(b[:maxEmergencyLine-4], "..."...)
	}
	b = append(b, '\n')
	if err := write(b); err != nil {
		log.Debug("no emergency write", "pci", addr, "err", err)
		return
	}
	log.Debug("emergency write", "pci", addr, "line", string(b[:len(b)-1]))
}

// lastWords is run's answer to a panic in any goroutine the agent started
// (internal/guard.Handler): the panic and its stack go to the log, and
// "fatal: panic: V" through the emergency channel of every device opened
// so far, without waiting for a lock the panicking goroutine may hold
// (driver.Device.LastGasp). The process then dies of the panic (exit 2).
type lastWords struct {
	log   *slog.Logger
	mu    sync.Mutex
	devs  []device
	addrs []string
}

func (w *lastWords) add(d device, addr string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.devs = append(w.devs, d)
	w.addrs = append(w.addrs, addr)
}

func (w *lastWords) panicked(v any, stack []byte) {
	w.log.Error("panic", "value", fmt.Sprint(v), "stack", string(stack))
	w.mu.Lock()
	devs, addrs := w.devs, w.addrs
	w.mu.Unlock()
	for i, d := range devs {
		write := d.EmergencyWrite
		if g, ok := d.(interface{ LastGasp([]byte) error }); ok {
			write = g.LastGasp
		}
		writeLine(write, addrs[i], w.log, fmt.Sprintf("fatal: panic: %v", v))
	}
}
