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
// devices after. With --wait-devices it also adopts functions that appear
// and lets go of those that go (supervisor.go), and runs with none.
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
		if !cfg.WaitDevices {
			return failed("no device to drive", err)
		}
		log.Info("no device to drive yet, or not every one named; waiting (--wait-devices)", "why", err.Error())
		fns = presentFunctions(cfg, log)
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
	s := newSupervisor(ctx, cfg, log, open, a)
	go func() {
		defer guard.Recover()
		s.served <- a.ServeControl(ctl)
	}()
	// The last gasp: if anything panics, in this goroutine or any other
	// the agent started, the host hears why (internal/guard).
	guard.SetHandler(s.words.panicked)
	defer guard.SetHandler(nil)
	defer guard.Recover()

	if code, ok := s.openStart(fns); !ok {
		s.shutdown()
		if code != exitOK {
			return failed("cannot open device", s.openErr)
		}
		return code
	}
	startFaultInjection(ctx, s.startDevices(), log)
	n := s.publishStart()
	log.Info("ready", "devices", len(fns), "ports", n, "socket_dir", a.Dir())
	if err := notify.send("READY=1", fmt.Sprintf("STATUS=serving %d ports of %d devices in %s", n, len(fns), a.Dir())); err != nil {
		log.Warn("readiness notification failed", "err", err)
	}
	if cfg.WaitDevices {
		if err := s.watchHotplug(); err != nil {
			log.Warn("hot-plug of functions disabled: cannot follow kernel uevents", "err", err)
		}
	}
	code := s.serve()
	if err := notify.send("STOPPING=1", "STATUS=shutting down"); err != nil {
		log.Warn("readiness notification failed", "err", err)
	}
	s.shutdown()
	log.Info("stopped", "exit_code", code)
	return code
}

// presentFunctions is, for --wait-devices, the functions that may be
// driven now (devopen.Eligible); the others are adopted when they appear.
func presentFunctions(cfg runConfig, log *slog.Logger) []pciscan.Function {
	all, err := pciscan.Scan(cfg.Sysfs)
	if err != nil {
		log.Warn("cannot list PCI functions", "err", err)
		return nil
	}
	var out []pciscan.Function
	for _, f := range all {
		if devopen.Eligible(f, cfg.Devices) {
			out = append(out, f)
		}
	}
	return out
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
