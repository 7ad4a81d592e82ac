package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"

	"github.com/vserial/vserial"
	"github.com/vserial/vserial/internal/guard"
	"github.com/vserial/vserial/internal/hotplug"
	"github.com/vserial/vserial/internal/supervisor"
)

// program names the agent in the lines the host reads on its console
// (emergency writes).
const program = "vserial-agent"

// runAgent is `vserial-agent run`, a user of package vserial: it builds
// vserial.Options from the flags, opens the functions (vserial.Open
// returns once the ports present at start have their sockets), reports
// READY, serves until ctx ends (SIGTERM/SIGINT) or every device stopped,
// and closes. What is the process's stays here: the log, systemd
// notification, the last gasp on a panic and fault injection.
func runAgent(ctx context.Context, cfg runConfig, stderr io.Writer, open supervisor.Opener) int {
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: cfg.LogLevel}))
	if cfg.Nice != 0 {
		// Before vserial.Open starts the loops (nice.go says why).
		if err := setNice(cfg.Nice); err != nil {
			log.Warn("cannot set the agent's nice value; round trips may take more process switches", "nice", cfg.Nice, "err", err)
		}
	}
	if cfg.ClientSendBuffer != 0 {
		old, restore, err := raiseSendBuffer(cfg.ClientSendBuffer)
		if err != nil {
			log.Warn("cannot raise the guest's default socket send buffer; clients keep the system's", "client_send_buffer", cfg.ClientSendBuffer, "err", err)
		} else {
			log.Info("raised the guest's default socket send buffer (net.core.wmem_default) while the agent runs", "from", old, "to", cfg.ClientSendBuffer)
			defer func() {
				if err := restore(); err != nil {
					log.Warn("cannot put back net.core.wmem_default", "value", old, "err", err)
				}
			}()
		}
	}
	notify := newNotify(log)
	h := newRunHooks(log, open)
	// The last gasp: if anything panics, in this goroutine or any other
	// the agent started, the host hears why (internal/guard).
	guard.SetHandler(h.words.panicked)
	defer guard.SetHandler(nil)
	defer guard.Recover()
	startFaultInjection(ctx, h.devices, log)

	a, err := vserial.Open(supervisor.WithHooks(ctx, h.hooks()), cfg.options(log))
	if err != nil {
		if ctx.Err() != nil {
			log.Info("stopped while opening devices", "err", err)
			return exitOK
		}
		log.Error("cannot start", "err", err)
		notify("STATUS=cannot start: " + err.Error())
		return exitFailure
	}
	log.Info("ready", "devices", h.startDevices, "ports", h.startPorts, "socket_dir", cfg.Agent.SocketDir)
	notify("READY=1", fmt.Sprintf("STATUS=serving %d ports of %d devices in %s", h.startPorts, h.startDevices, cfg.Agent.SocketDir))
	code := exitOK
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case <-a.Done():
		code = exitFailure
	}
	notify("STOPPING=1", "STATUS=shutting down")
	a.Close()
	log.Info("stopped", "exit_code", code)
	return code
}

// options is the run configuration as package vserial takes it.
func (cfg runConfig) options(log *slog.Logger) vserial.Options {
	maxPorts := cfg.MaxPorts
	if maxPorts == 0 {
		maxPorts = -1 // --max-ports 0: as many as the device offers
	}
	return vserial.Options{
		Devices:       cfg.Devices,
		Bind:          cfg.Bind,
		SocketDir:     cfg.Agent.SocketDir,
		Poll:          cfg.Poll.String(),
		Logger:        log,
		SocketMode:    cfg.Agent.SocketMode,
		ControlMode:   cfg.Agent.ControlMode,
		DirMode:       cfg.Agent.DirMode,
		Ports:         cfg.Agent.Ports,
		DefaultPort:   cfg.Agent.Default,
		Console:       cfg.Agent.Console,
		MaxPorts:      maxPorts,
		DMABudget:     cfg.DMABudget,
		Ring:          cfg.Ring.String(),
		ShutdownFlush: cfg.ShutdownFlush,
		WaitDevices:   cfg.WaitDevices,
		Nodes:         cfg.Nodes,
		Sysfs:         cfg.Sysfs,
		Program:       program,
	}
}

// newNotify returns a function sending systemd notifications (sd_notify;
// none without $NOTIFY_SOCKET); a failure is logged, never fatal: the
// supervisor will time the start out and say so.
func newNotify(log *slog.Logger) func(lines ...string) {
	n, err := newNotifier()
	if err != nil {
		log.Warn("readiness notification disabled", "err", err)
	}
	return func(lines ...string) {
		if err := n.send(lines...); err != nil {
			log.Warn("readiness notification failed", "err", err)
		}
	}
}

// runHooks is what run learns from package vserial beyond its API
// (supervisor.Hooks): each device as it is opened, for the last gasp and
// fault injection, and what was published at start, for READY.
type runHooks struct {
	open  supervisor.Opener // nil: the real devices
	words *lastWords

	mu   sync.Mutex
	devs []supervisor.Device // by device index

	startDevices, startPorts int // set before vserial.Open returns
}

func newRunHooks(log *slog.Logger, open supervisor.Opener) *runHooks {
	return &runHooks{open: open, words: &lastWords{log: log}}
}

func (h *runHooks) hooks() supervisor.Hooks {
	return supervisor.Hooks{
		Open:      h.open,
		Opened:    h.opened,
		Started:   func(devices, ports int) { h.startDevices, h.startPorts = devices, ports },
		MaxResets: maxResets,
		Uevents:   newUevents,
	}
}

// newUevents opens the kernel's uevent stream for --wait-devices (nil:
// pciscan.Watch; tests replace it).
var newUevents func() (hotplug.Uevents, error)

func (h *runHooks) opened(index int, addr string, d supervisor.Device) {
	h.words.add(d, addr)
	h.mu.Lock()
	defer h.mu.Unlock()
	for len(h.devs) <= index {
		h.devs = append(h.devs, nil)
	}
	h.devs[index] = d
}

// devices returns the devices opened so far, by index (nil: none there).
func (h *runHooks) devices() []supervisor.Device {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]supervisor.Device(nil), h.devs...)
}

// lastWords is run's answer to a panic in any goroutine the agent started
// (internal/guard.Handler): the panic and its stack go to the log, and
// "fatal: panic: V" through the emergency channel of every device opened
// so far, without waiting for a lock the panicking goroutine may hold
// (driver.Device.LastGasp). The process then dies of the panic (exit 2).
type lastWords struct {
	log   *slog.Logger
	mu    sync.Mutex
	devs  []supervisor.Device
	addrs []string
}

func (w *lastWords) add(d supervisor.Device, addr string) {
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
	line := supervisor.Line(program, fmt.Sprintf("fatal: panic: %v", v))
	for i, d := range devs {
		write := d.EmergencyWrite
		if g, ok := d.(interface{ LastGasp([]byte) error }); ok {
			write = g.LastGasp
		}
		if err := write(line); err != nil {
			w.log.Debug("no emergency write", "pci", addrs[i], "err", err)
		}
	}
}
