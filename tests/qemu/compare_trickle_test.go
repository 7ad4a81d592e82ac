package qemu

// The one-way trickle (the agent's CPU per message) and the idle cost.

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

func (s *suite) trickles() {
	s.printf("\none-way trickle, 1 byte every ms, no replies; agent CPU per message over %v after %v:\n", trickleWindow, trickleSettle)
	var def float64
	for _, c := range []struct {
		name  string
		extra []string
	}{{"default", nil}, {"--poll off", []string{"--poll", "off"}}} {
		v, err := s.trickle('A', c.name, c.extra...)
		var exited *errAgentExited
		var usage *ExitError
		switch {
		case errors.As(err, &exited) && errors.As(exited.err, &usage) && usage.Code == 2 && c.extra != nil:
			// Exit status 2: a usage error, the flag is not there (yet).
			s.printf("  %s: skipped, the agent does not take it: %s\n", c.name, firstLine(exited.output))
			continue
		case err != nil:
			s.b.Fatalf("trickle (%s): %v", c.name, err)
		}
		if c.extra == nil {
			def = v
			s.b.ReportMetric(v, "trickle-cpu-µs/msg")
		} else {
			s.b.ReportMetric(v, "trickle-polloff-cpu-µs/msg")
			s.printf("  default/off %.2f×\n", def/v)
		}
	}
	if s.cfg.hasB() {
		s.trickleAB(def)
	}
}

// trickleAB runs the default trickle through B and A again, alternated
// (B A A B after the A run of trickles, whose figure is a), and prints
// A/B of the CPU per message: the median of the three A runs over the
// median of the two B runs, with each run's figure.
func (s *suite) trickleAB(a float64) {
	as, bs := []float64{a}, []float64(nil)
	for _, arm := range []byte("BAAB") {
		v, err := s.trickle(arm, fmt.Sprintf("default, %c", arm))
		if err != nil {
			s.b.Fatalf("trickle (%c): %v", arm, err)
		}
		if arm == 'A' {
			as = append(as, v)
		} else {
			bs = append(bs, v)
		}
	}
	// %.0f formats each element of a slice.
	s.printf("  CPU per message, default: A %.0f µs %.0f, B %.0f µs %.0f; A/B %.2f×\n",
		median(as), as, median(bs), bs, median(as)/median(bs))
}

func firstLine(s string) string {
	for line := range strings.Lines(s) {
		if line = strings.TrimSpace(line); line != "" {
			return line
		}
	}
	return ""
}

// trickle runs the trickle through an agent (arm A or B) started with
// extra and returns its CPU time per message in µs (from schedstat).
func (s *suite) trickle(arm byte, name string, extra ...string) (float64, error) {
	se, err := s.open(arm, extra...)
	if err != nil {
		return 0, err
	}
	conn := s.conns[0]
	var got atomic.Int64
	readErr := make(chan error, 1)
	done := deadline(s.ctx, conn)
	go func() {
		defer done()
		buf := make([]byte, 4096)
		for got.Load() < trickleCount {
			k, err := conn.Read(buf)
			got.Add(int64(k))
			if err != nil {
				readErr <- err
				return
			}
		}
		readErr <- nil
	}()
	p, err := s.g.Start(s.ctx, "trickle", se.paths[0], strconv.Itoa(trickleCount), "1000")
	if err != nil {
		return 0, err
	}
	time.Sleep(trickleSettle)
	_, c0 := s.snap(se)
	n0 := got.Load()
	time.Sleep(trickleWindow)
	n1 := got.Load()
	c1, _ := s.snap(se)
	if _, err := p.Wait(s.ctx); err != nil {
		return 0, err
	}
	select {
	case err = <-readErr:
	case <-time.After(30 * time.Second):
		_ = conn.SetDeadline(time.Unix(1, 0))
		err = errors.Join(errors.New("the last bytes did not arrive within 30 s"), <-readErr)
	}
	if err != nil {
		return 0, fmt.Errorf("host read after %d of %d bytes: %w", got.Load(), trickleCount, err)
	}
	if err := s.close(se); err != nil {
		return 0, err
	}
	d := c1.sub(c0)
	// Per message (one byte) the agent relayed between the two counter
	// snapshots (the port's bytes_out): the bytes the host read in its
	// own window, between the snapshots, can be far fewer or more (in one
	// boot 588 against the agent's 1470), and the agent's sends fewer
	// when it took two bytes in one read.
	msgs := portCount(d, s.names[0], "bytes_out")
	s.printCounters("  ", fmt.Sprintf("%s: %.0f messages relayed in the counters' window (the host read %d bytes in its window); per message: ", name, msgs, n1-n0), d, msgs)
	if msgs == 0 {
		return math.NaN(), nil
	}
	return d["sched_ms"] * 1e3 / msgs, nil
}

// portCount is the port's figure name in c (the agent's, by the port's
// name in list --json: a counter or its bytes_in or bytes_out).
func portCount(c counterSet, port, name string) float64 {
	prefix := "agent.ports[" + port + "]."
	for k, v := range c {
		if strings.HasPrefix(k, prefix) && strings.HasSuffix(k, "."+name) {
			return v
		}
	}
	return 0
}

func (s *suite) idle() {
	se, err := s.open('A')
	if err != nil {
		s.b.Fatalf("idle: %v", err)
	}
	ready := "/tmp/idle-ready"
	hold, err := s.g.Start(s.ctx, append([]string{"hold", ready, "60"}, se.paths...)...)
	if err != nil {
		s.b.Fatalf("idle: %v", err)
	}
	if err := s.g.WaitPath(s.ctx, ready, 30*time.Second); err != nil {
		s.b.Fatalf("idle: clients: %v", err)
	}
	time.Sleep(500 * time.Millisecond)
	_, c0 := s.snap(se)
	time.Sleep(idleWindow)
	c1, _ := s.snap(se)
	_ = hold.Signal(s.ctx, 15)
	_, _ = hold.Wait(s.ctx) // killed: not an error
	if err := s.close(se); err != nil {
		s.b.Fatalf("idle: %v", err)
	}
	d := c1.sub(c0)
	s.printCounters("\n", fmt.Sprintf("idle, %d clients connected and the host connected, over %v: ", len(se.paths), idleWindow), d, 1)
	s.b.ReportMetric(d["cpu_ms"]/1e3, "idle-cpu-s")
}
