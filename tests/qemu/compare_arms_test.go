package qemu

// The benchmark's arms (K, S, A, B, G): taking the function for each,
// giving it back, and reading their counters.

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/vserial/vserial/tests/qemu/internal/wire"
)

// session is one arm set up in the guest: the paths a guest program
// opens for each port, and what runs for it.
type session struct {
	arm   byte
	paths []string // per port; for S only the main port's is the relay
	agent *Proc    // A
	socat *Proc    // S
}

// pid is the process whose CPU time and context switches are counted:
// the agent's, none for the other arms.
func (se *session) pid() int {
	if se.agent != nil {
		return se.agent.Pid
	}
	return 0
}

// open sets up an arm. For A, extra are more `run` flags; an agent that
// exits at once (a flag it does not know) gives ErrAgentExited with its
// output.
func (s *suite) open(arm byte, extra ...string) (*session, error) {
	se := &session{arm: arm}
	if arm == 'A' || arm == 'B' {
		path := AgentPath
		if arm == 'B' && s.cfg.BAgent != "" {
			path = benchAgentB
		}
		args := []string{"--log-level", "info", "--bind", s.bind, "--device", s.addr}
		args = append(args, strings.Fields(os.Getenv(EnvBenchAgentArgs))...)
		if arm == 'B' {
			args = append(args, s.cfg.BArgs...)
		}
		args = append(args, extra...)
		p, err := StartAgentAt(s.ctx, s.g, path, args...)
		if err != nil {
			return nil, err
		}
		se.agent = p
		for _, n := range s.names {
			se.paths = append(se.paths, AgentSocket(n))
		}
		if err := s.waitAgent(p, se.paths); err != nil {
			return nil, err
		}
		return se, nil
	}
	devs, err := s.vports()
	if err != nil {
		return nil, err
	}
	for _, n := range s.names {
		se.paths = append(se.paths, devs[n])
	}
	if arm == 'G' {
		// Each guest program takes the function from virtio-pci itself.
		se.paths = se.paths[:0]
		poll := benchPoll(strings.Fields(os.Getenv(EnvBenchAgentArgs)))
		for _, n := range s.names {
			se.paths = append(se.paths, wire.VserialPath(s.bind, s.addr, n, poll))
		}
		return se, nil
	}
	if arm == 'S' {
		p, err := s.g.Start(s.ctx, SocatPath, "UNIX-LISTEN:"+socatSocket+",fork,unlink-early", se.paths[0])
		if err != nil {
			return nil, err
		}
		se.socat = p
		if err := s.g.WaitPath(s.ctx, socatSocket, 30*time.Second); err != nil {
			return nil, fmt.Errorf("socat: %w", err)
		}
		se.paths[0] = socatSocket
	}
	return se, nil
}

// benchPoll is the value of --poll in run flags, "" if none.
func benchPoll(args []string) string {
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, "--poll="); ok {
			return v
		}
		if a == "--poll" && i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}

// errAgentExited is an agent that stopped before it published its
// sockets.
type errAgentExited struct {
	err    error
	output string
}

func (e *errAgentExited) Error() string {
	return fmt.Sprintf("vserial-agent exited before publishing its ports: %v\n%s", e.err, e.output)
}

func (s *suite) waitAgent(p *Proc, paths []string) error {
	deadline := time.Now().Add(60 * time.Second)
	for _, sock := range paths {
		for {
			err := s.g.WaitPath(s.ctx, sock, time.Second)
			if err == nil {
				break
			}
			if p.Exited() {
				out, werr := p.Wait(s.ctx)
				return &errAgentExited{werr, out}
			}
			if s.ctx.Err() != nil || time.Now().After(deadline) {
				_ = p.Signal(s.ctx, 15)
				out, _ := p.Wait(s.ctx)
				return fmt.Errorf("vserial-agent published no %s: %v\n%s", sock, err, out)
			}
		}
	}
	return nil
}

// vports waits until the in-kernel driver shows every port (after the
// agent gave the function back, ports come up one by one) and returns
// name → device.
func (s *suite) vports() (map[string]string, error) {
	deadline := time.Now().Add(60 * time.Second)
	for {
		out, err := s.g.Run(s.ctx, "vports")
		devs := map[string]string{}
		for line := range strings.Lines(out) {
			if f := strings.Fields(line); len(f) >= 2 {
				devs[f[0]] = f[1]
			}
		}
		missing := 0
		for _, n := range s.names {
			if devs[n] == "" {
				missing++
			}
		}
		if err == nil && missing == 0 {
			return devs, nil
		}
		if time.Now().After(deadline) || s.ctx.Err() != nil {
			return nil, fmt.Errorf("the in-kernel driver shows %d of %d ports (%v): %s", len(s.names)-missing, len(s.names), err, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// settle waits, for S, until socat's relay of the last connection has
// exited: the device is open once at a time, and the next connection's
// relay must be able to open it.
func (s *suite) settle(se *session) error {
	if se.socat == nil {
		return nil
	}
	_, err := s.g.Run(s.ctx, "wait-nochild", strconv.Itoa(se.socat.Pid), "30")
	return err
}

// close stops what open started. After the agent (and the Go library's
// programs) it makes sure the function is back on virtio-pci.
func (s *suite) close(se *session) error {
	switch {
	case se.arm == 'G':
		return s.backToVirtioPCI("the Go library")
	case se.socat != nil:
		if err := s.settle(se); err != nil {
			return err
		}
		if err := se.socat.Signal(s.ctx, 15); err != nil {
			return err
		}
		_, _ = se.socat.Wait(s.ctx) // killed by the signal: not an error
	case se.agent != nil:
		if err := se.agent.Signal(s.ctx, 15); err != nil {
			return err
		}
		if out, err := se.agent.Wait(s.ctx); err != nil {
			return fmt.Errorf("vserial-agent exit: %v\n%s", err, out)
		}
		return s.backToVirtioPCI("the agent")
	}
	return nil
}

// backToVirtioPCI binds the function to virtio-pci again if who left it
// elsewhere.
func (s *suite) backToVirtioPCI(who string) error {
	drv, _ := s.g.Run(s.ctx, "readlink", "/sys/bus/pci/devices/"+s.addr+"/driver")
	if path.Base(strings.TrimSpace(drv)) != "virtio-pci" {
		if _, err := s.g.Run(s.ctx, "write", "/sys/bus/pci/drivers/virtio-pci/bind", s.addr); err != nil {
			return fmt.Errorf("%s left %s on %q; binding virtio-pci: %w", who, s.addr, drv, err)
		}
	}
	return nil
}

// snap reads the counters of an arm between two phases: for the phase
// that ends (end) and for the one that begins (begin). They are the
// agent's CPU time and context switches, the device's interrupt lines
// and, for A, every "counters" object in `vserial-agent list --json`.
// The agent answers list itself, so its CPU is read before and after the
// query, and the query's cost falls in neither phase. A failure costs the
// counters, not the run.
func (s *suite) snap(se *session) (end, begin counterSet) {
	proc := func() counterSet {
		out, err := s.g.Run(s.ctx, "procsnap", strconv.Itoa(se.pid()), s.addr)
		if err != nil {
			s.printf("  (procsnap: %v)\n", err)
		}
		return procCounters(out)
	}
	end = proc()
	if se.agent == nil {
		return end, end
	}
	list := s.agentCounters()
	begin = proc()
	maps.Copy(end, list)
	maps.Copy(begin, list)
	return end, begin
}

// agentCounters reads every "counters" object of `vserial-agent list
// --json`.
func (s *suite) agentCounters() counterSet {
	js, err := s.g.Run(s.ctx, AgentPath, "list", "--json", "--socket-dir", AgentSocketDir)
	if err != nil {
		s.printf("  (list --json: %v)\n", err)
		return nil
	}
	var raw json.RawMessage // the first JSON value; anything after it is log
	if err := json.NewDecoder(strings.NewReader(js)).Decode(&raw); err != nil {
		s.printf("  (list --json: %v)\n", err)
		return nil
	}
	c, err := listCounters(raw)
	if err != nil {
		s.printf("  (%v)\n", err)
	}
	return c
}
