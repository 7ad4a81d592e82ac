package main

// `vserial-agent events`: print a running agent's event stream, or wait
// for one condition on one port.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/spf13/pflag"

	"github.com/vserial/vserial/agent"
)

// exitTimeout is the exit code of `events --wait` when --timeout passed
// first.
const exitTimeout = 4

// waitCond is a condition `events --wait` waits for.
type waitCond string

// The conditions, each about the port --port names.
var waitConds = map[waitCond]string{
	"port-added":          "the port exists (has been added)",
	"port-removed":        "the port does not exist (any more)",
	"host-connected":      "the port exists and a host program has its chardev open",
	"host-disconnected":   "the port exists and no host program has its chardev open",
	"client-connected":    "the port exists and a guest client is connected",
	"client-disconnected": "the port exists and no guest client is connected",
}

// eventsConfig is everything `vserial-agent events` was told.
type eventsConfig struct {
	SocketDir string
	JSON      bool
	Wait      waitCond      // "" : print the stream
	Port      string        // name, socket file name or socket path; "" : every port
	Timeout   time.Duration // --wait only; 0: none
}

// parseEvents turns `events` arguments into an eventsConfig.
func parseEvents(args []string, out io.Writer) (eventsConfig, error) {
	const cmd = "events"
	fl := pflag.NewFlagSet(cmd, pflag.ContinueOnError)
	fl.SetOutput(io.Discard)
	socketDir := fl.String("socket-dir", agent.DefaultSocketDir, "socket directory of the agent to subscribe to")
	asJSON := fl.Bool("json", false, "print the agent's JSON lines as they come instead of text")
	wait := fl.String("wait", "", "wait until this holds for --port, then exit 0: "+strings.Join(condNames(), ", "))
	port := fl.String("port", "", "only this port: its host name, its socket file name (e.g. vport0p3) or socket path")
	timeout := fl.Duration("timeout", 0, "with --wait: give up after this long (e.g. 30s), exit 4")
	fl.Usage = func() {}
	if err := fl.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			fmt.Fprint(out, eventsUsage+fl.FlagUsages())
			return eventsConfig{}, err
		}
		return eventsConfig{}, &usageError{cmd, err}
	}
	if fl.NArg() > 0 {
		return eventsConfig{}, usagef(cmd, "unexpected argument %q (events takes only flags)", fl.Arg(0))
	}
	cfg := eventsConfig{JSON: *asJSON, Wait: waitCond(*wait), Port: *port, Timeout: *timeout}
	var err error
	if cfg.SocketDir, err = checkDir(cmd, "--socket-dir", *socketDir); err != nil {
		return eventsConfig{}, err
	}
	if strings.ContainsRune(cfg.Port, 0) || (fl.Changed("port") && strings.TrimSpace(cfg.Port) == "") {
		return eventsConfig{}, usagef(cmd, "--port %q: give a port name, socket file name or socket path", cfg.Port)
	}
	if cfg.Wait != "" {
		if _, ok := waitConds[cfg.Wait]; !ok {
			return eventsConfig{}, usagef(cmd, "--wait %q: want one of %s", cfg.Wait, strings.Join(condNames(), ", "))
		}
		if cfg.Port == "" {
			return eventsConfig{}, usagef(cmd, "--wait %s needs --port NAME", cfg.Wait)
		}
	}
	if cfg.Timeout < 0 {
		return eventsConfig{}, usagef(cmd, "--timeout %v: must not be negative", cfg.Timeout)
	}
	if cfg.Timeout > 0 && cfg.Wait == "" {
		return eventsConfig{}, usagef(cmd, "--timeout needs --wait")
	}
	return cfg, nil
}

func condNames() []string {
	var names []string
	for _, c := range []waitCond{"port-added", "port-removed", "host-connected", "host-disconnected", "client-connected", "client-disconnected"} {
		names = append(names, string(c))
	}
	return names
}

// events is `vserial-agent events`.
func events(ctx context.Context, cfg eventsConfig, stdout, stderr io.Writer) int {
	if cfg.Wait != "" {
		return waitFor(ctx, cfg, stdout, stderr)
	}
	s, err := agent.SubscribeEvents(ctx, cfg.SocketDir)
	if err != nil {
		fmt.Fprintf(stderr, "vserial-agent events: %v\n", err)
		return exitFailure
	}
	defer s.Close()
	for {
		ev, line, err := s.Next()
		switch {
		case errors.Is(err, io.EOF):
			return exitOK
		case ctx.Err() != nil:
			return exitOK // interrupted
		case err != nil:
			fmt.Fprintf(stderr, "vserial-agent events: %v\n", err)
			return exitFailure
		}
		if cfg.Port != "" && !eventConcerns(ev, cfg.Port) {
			continue
		}
		if err := printEvent(stdout, cfg, ev, line); err != nil {
			fmt.Fprintf(stderr, "vserial-agent events: %v\n", err)
			return exitFailure
		}
		if ev.Event == agent.EventOverflow {
			fmt.Fprintf(stderr, "vserial-agent events: the agent cut this stream off: it did not read fast enough (events were lost)\n")
			return exitFailure
		}
	}
}

// printEvent prints one event: the agent's line with --json, else text.
func printEvent(w io.Writer, cfg eventsConfig, ev agent.Event, line []byte) error {
	if cfg.JSON {
		_, err := fmt.Fprintf(w, "%s\n", line)
		return err
	}
	_, err := io.WriteString(w, formatEvent(ev, cfg.Port))
	return err
}

// formatEvent is the text form of ev: time, kind, then key=value pairs,
// one line (the snapshot: one line, then one indented line per port).
func formatEvent(ev agent.Event, only string) string {
	var b strings.Builder
	b.WriteString(ev.Time.UTC().Format("2006-01-02T15:04:05.000Z"))
	b.WriteString(" ")
	b.WriteString(string(ev.Event))
	kv := func(k string, v any) { fmt.Fprintf(&b, " %s=%s", k, quote(fmt.Sprint(v))) }
	if ev.Status != nil {
		var ports []agent.PortStatus
		for _, p := range ev.Status.Ports {
			if only == "" || statusMatches(p, only) {
				ports = append(ports, p)
			}
		}
		kv("socket_dir", ev.Status.SocketDir)
		kv("ports", len(ports))
		b.WriteString("\n")
		for _, p := range ports {
			fmt.Fprintf(&b, "  dev=%d port=%d name=%s socket=%s mode=%s host=%s client=%s\n", p.Device, p.ID,
				quote(dash(p.Name)), quote(dash(p.Socket)), dash(string(p.Mode)), yesNo(p.HostConnected), yesNo(p.ClientConnected))
		}
		return b.String()
	}
	if ev.Device != nil {
		kv("dev", *ev.Device)
	}
	if ev.Port != nil {
		kv("port", *ev.Port)
	}
	if ev.Name != "" {
		kv("name", ev.Name)
	}
	if ev.Socket != "" {
		kv("socket", ev.Socket)
	}
	if ev.Target != "" {
		kv("target", ev.Target)
	}
	if ev.OldName != "" {
		kv("old_name", ev.OldName)
	}
	if ev.OldSocket != "" {
		kv("old_socket", ev.OldSocket)
	}
	if ev.HostConnected != nil {
		kv("host", yesNo(*ev.HostConnected))
	}
	if ev.PeerPID != nil {
		kv("pid", *ev.PeerPID)
	}
	if ev.PeerUID != nil {
		kv("uid", *ev.PeerUID)
	}
	if ev.Cols != 0 || ev.Rows != 0 {
		kv("size", fmt.Sprintf("%dx%d", ev.Cols, ev.Rows))
	}
	if ev.PTY != "" {
		kv("pty", ev.PTY)
	}
	if ev.Rejected != 0 {
		kv("rejected_total", ev.Rejected)
	}
	if ev.Violations != 0 {
		kv("violations", ev.Violations)
	}
	if ev.Reason != "" {
		kv("reason", ev.Reason)
	}
	b.WriteString("\n")
	return b.String()
}

// quote leaves plain words alone and quotes the rest, so a line splits at
// blanks and a host-chosen name cannot carry terminal escapes.
func quote(s string) string {
	if s == "" || strings.ContainsAny(s, " \t\n\"=\\") || unprintable(s) {
		return strconv.Quote(s)
	}
	return s
}

// unprintable reports whether s holds a byte or rune a terminal could act
// on (C0 and C1 controls, DEL, invalid UTF-8) or that strconv.Quote
// escapes for another reason.
func unprintable(s string) bool {
	return !utf8.ValidString(s) || strings.ContainsFunc(s, func(r rune) bool { return !strconv.IsPrint(r) })
}

// portMatches reports whether a port with this host name and socket is the
// one --port names: by host name, socket file name or socket path.
func portMatches(name, socket, want string) bool {
	return (name != "" && name == want) || (socket != "" && (socket == want || filepath.Base(socket) == want))
}

func statusMatches(p agent.PortStatus, want string) bool {
	return portMatches(p.Name, p.Socket, want)
}

// eventConcerns reports whether ev is about the port --port names.
func eventConcerns(ev agent.Event, want string) bool {
	switch ev.Event {
	case agent.EventSnapshot, agent.EventOverflow, agent.EventAgentStopping:
		return true
	}
	return portMatches(ev.Name, ev.Socket, want) || portMatches(ev.OldName, ev.OldSocket, want)
}

// portKey identifies a port across devices.
type portKey struct {
	dev int
	id  uint32
}

// portState is what `--wait` knows of a port.
type portState struct {
	name, socket string
	host, client bool
}

// portModel is the agent's ports as the stream tells them: the snapshot,
// then each event applied.
type portModel map[portKey]*portState

func (m portModel) apply(ev agent.Event) {
	if ev.Event == agent.EventSnapshot {
		clear(m)
		for _, p := range ev.Status.Ports {
			m[portKey{p.Device, p.ID}] = &portState{name: p.Name, socket: p.Socket, host: p.HostConnected, client: p.ClientConnected}
		}
		return
	}
	if ev.Device == nil || ev.Port == nil {
		return
	}
	k := portKey{*ev.Device, *ev.Port}
	if ev.Event == agent.EventPortRemoved {
		delete(m, k)
		return
	}
	st := m[k]
	if st == nil {
		switch ev.Event {
		case agent.EventDeviceReset, agent.EventProtocolViolation, agent.EventDeviceLimited, agent.EventDeviceFailed, agent.EventNodeFailed:
			return // says nothing of the port's existence
		}
		st = &portState{}
		m[k] = st
	}
	st.name, st.socket = ev.Name, ev.Socket
	switch ev.Event {
	case agent.EventPortAdded:
		if ev.HostConnected != nil {
			st.host = *ev.HostConnected
		}
	case agent.EventHostConnected:
		st.host = true
	case agent.EventHostDisconnected:
		st.host = false
	case agent.EventClientConnected:
		st.client = true
	case agent.EventClientDisconnected:
		st.client = false
	}
}

// holds reports whether c holds for the port named want.
func (m portModel) holds(c waitCond, want string) bool {
	found := false
	for _, st := range m {
		if !portMatches(st.name, st.socket, want) {
			continue
		}
		found = true
		switch {
		case c == "port-added",
			c == "host-connected" && st.host,
			c == "host-disconnected" && !st.host,
			c == "client-connected" && st.client,
			c == "client-disconnected" && !st.client:
			return true
		}
	}
	return c == "port-removed" && !found
}

// waitFor is `events --wait`: it exits 0 as soon as the condition holds
// (at once when the snapshot shows it), printing what made it hold.
func waitFor(ctx context.Context, cfg eventsConfig, stdout, stderr io.Writer) int {
	what := fmt.Sprintf("%s on port %s", cfg.Wait, cfg.Port)
	if cfg.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.Timeout)
		defer cancel()
	}
	m := portModel{}
	for {
		// A stream cut off for overflow is taken up again: the new
		// snapshot says where things stand.
		s, err := agent.SubscribeEvents(ctx, cfg.SocketDir)
		if err != nil {
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				fmt.Fprintf(stderr, "vserial-agent events: timed out after %v waiting for %s\n", cfg.Timeout, what)
				return exitTimeout
			}
			fmt.Fprintf(stderr, "vserial-agent events: %v\n", err)
			return exitFailure
		}
		code, again := waitOn(ctx, s, m, cfg, what, stdout, stderr)
		s.Close()
		if !again {
			return code
		}
	}
}

// waitOn follows one subscription for waitFor; again is set when the stream
// overflowed and waitFor should subscribe again.
func waitOn(ctx context.Context, s *agent.EventStream, m portModel, cfg eventsConfig, what string, stdout, stderr io.Writer) (code int, again bool) {
	for {
		ev, line, err := s.Next()
		switch {
		case errors.Is(ctx.Err(), context.DeadlineExceeded):
			fmt.Fprintf(stderr, "vserial-agent events: timed out after %v waiting for %s\n", cfg.Timeout, what)
			return exitTimeout, false
		case ctx.Err() != nil:
			fmt.Fprintf(stderr, "vserial-agent events: interrupted while waiting for %s\n", what)
			return exitFailure, false
		case errors.Is(err, io.EOF):
			fmt.Fprintf(stderr, "vserial-agent events: the agent stopped before %s\n", what)
			return exitFailure, false
		case err != nil:
			fmt.Fprintf(stderr, "vserial-agent events: %v\n", err)
			return exitFailure, false
		}
		if ev.Event == agent.EventOverflow {
			return 0, true
		}
		m.apply(ev)
		if m.holds(cfg.Wait, cfg.Port) {
			if err := printEvent(stdout, cfg, ev, line); err != nil {
				fmt.Fprintf(stderr, "vserial-agent events: %v\n", err)
				return exitFailure, false
			}
			return exitOK, false
		}
	}
}
