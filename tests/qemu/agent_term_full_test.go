package qemu

import (
	"context"
	"io"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vserial/vserial/tests/qemu/internal/wire"
)

// TestAgentSigtermHostNotReading characterizes a shutdown with the
// transmit ring full: the host side of the port is connected but never
// reads, so QEMU cannot hand guest→host bytes on and keeps the transmit
// buffers, while a guest client has many MiB more to write. On SIGTERM
// the agent must still exit within a bound (termBound: a hang guard, not a
// speed figure) with the documented status (0, a clean shutdown), and
// every byte the host does get is the client's stream from its start, in
// order.
//
// Issue 10 item 9 asks, in addition, for a bounded flush of what the agent
// read from clients and a log line counting what could not be delivered.
// The test logs the figures (what the client handed over, what the host
// got) and pins what the agent logs about the client today; see the
// comment at the log check.
func TestAgentSigtermHostNotReading(t *testing.T) {
	t.Parallel()
	const name = "org.vserial.term.0"
	a := bootAgent(t, Options{Ports: []Port{{Name: name, Nr: 1}}}, name)
	g := a.g
	ctx, cancel := context.WithTimeout(t.Context(), 6*time.Minute)
	defer cancel()
	sock := AgentSocket(name)
	conn := g.DialPort(t, name) // connected, and never read until the agent is gone
	a.waitList(ctx, t, name+" host-connected", func(l agentList) bool {
		p, ok := l.port(sock)
		return ok && p.HostConnected
	})

	const n, seed = 256 << 20, 5100
	src, err := g.Start(ctx, "source", sock, strconv.Itoa(n), strconv.Itoa(seed))
	if err != nil {
		t.Fatal(err)
	}
	// Full: bytes_out (what the device took) stops moving while the
	// client still has bytes to write.
	var stuck listPort
	const still = 3 * time.Second
	for since := time.Now(); ; time.Sleep(250 * time.Millisecond) {
		if src.Exited() {
			out, err := src.Wait(ctx)
			t.Fatalf("the guest client finished %d bytes with the host not reading: %v %s", n, err, out)
		}
		l, _, err := a.list(ctx)
		if err != nil {
			t.Fatal(err)
		}
		p, _ := l.port(sock)
		if !p.ClientConnected || p.BytesOut == 0 || p.BytesOut != stuck.BytesOut {
			stuck, since = p, time.Now()
		} else if time.Since(since) >= still {
			break
		}
	}
	t.Logf("transmit side full: bytes_out %d unchanged for %v, the client still writing", stuck.BytesOut, still)

	t0 := time.Now()
	out, err := a.stop(ctx)
	took := time.Since(t0)
	t.Logf("vserial-agent exited %v after SIGTERM (%v); its log:\n%s", took.Round(time.Millisecond), err, out)
	if err != nil {
		t.Errorf("exit after SIGTERM: %v, want status 0 (a clean shutdown, per `vserial-agent help`)", err)
	}
	if took > termBound {
		t.Errorf("vserial-agent took %v to exit after SIGTERM with the transmit ring full, more than %v", took, termBound)
	}

	// The client is cut off: its write fails, and it says after how many
	// bytes (those its socket accepted).
	sout, serr := src.Wait(ctx)
	if serr == nil {
		t.Fatalf("the guest client finished normally although the agent stopped: %s", sout)
	}
	var handed int64 = -1
	if m := regexp.MustCompile(`after (\d+) of \d+ bytes`).FindStringSubmatch(sout); m != nil {
		handed, _ = strconv.ParseInt(m[1], 10, 64)
	}
	t.Logf("guest client: %s", strings.TrimSpace(sout))

	// What the host gets once it reads: a prefix of the stream, at least
	// what the device had taken.
	got, mis := readQuiet(conn, seed, 3*time.Second)
	t.Logf("host got %d bytes; the client's socket had accepted %d; the device had taken %d when it filled: %d bytes accepted from the client never reached the host",
		got, handed, stuck.BytesOut, handed-got)
	if mis >= 0 {
		t.Errorf("guest→host bytes differ from the pattern at offset %d: a gap, a duplicate or a changed byte", mis)
	}
	if got < int64(stuck.BytesOut) {
		t.Errorf("host got %d bytes, fewer than the %d the device had taken", got, stuck.BytesOut)
	}
	if handed >= 0 && got > handed {
		t.Errorf("host got %d bytes, more than the %d the client wrote", got, handed)
	}

	// The log: what the agent says about the client it cut off. Today it
	// is the session's end with the reason "agent closing" and nothing
	// about the bytes it had read from the client but not delivered (issue
	// 10 item 9 is not done yet); when a count is logged, this is where it
	// should be checked.
	if !hasLogLine(out, `msg="client gone"`, `why="agent closing"`) {
		t.Errorf("no `client gone why=\"agent closing\"` line for the client cut off at shutdown")
	}
	for line := range strings.Lines(out) {
		l := strings.ToLower(line)
		if strings.Contains(l, "undeliver") || strings.Contains(l, "not delivered") || strings.Contains(l, "lost") || strings.Contains(l, "flush") {
			t.Logf("shutdown loss line: %s", strings.TrimSpace(line))
		}
	}
}

// termBound bounds the agent's exit after SIGTERM, measured from the
// host: generous for a loaded 2-core host running TCG, small against a
// hang (the agent's own waits on shutdown are a few seconds each).
const termBound = 10 * time.Second

// hasLogLine reports whether one line of log holds every part.
func hasLogLine(log string, parts ...string) bool {
	for line := range strings.Lines(log) {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			return true
		}
	}
	return false
}

// readQuiet reads conn until nothing has come for quiet and returns how
// many bytes came and the offset of the first that is not
// wire.Pattern(seed) (-1: none).
func readQuiet(conn interface {
	io.Reader
	SetReadDeadline(time.Time) error
}, seed uint64, quiet time.Duration) (got, mismatch int64) {
	p := wire.Pattern(seed)
	buf, want := make([]byte, 256<<10), make([]byte, 256<<10)
	mismatch = -1
	defer conn.SetReadDeadline(time.Time{})
	for {
		_ = conn.SetReadDeadline(time.Now().Add(quiet))
		k, err := conn.Read(buf)
		if k > 0 {
			_, _ = p.Read(want[:k])
			if i := wire.Mismatch(buf[:k], want[:k]); mismatch < 0 && i >= 0 {
				mismatch = got + int64(i)
			}
			got += int64(k)
		}
		if err != nil { // quiet for that long, or the end
			return got, mismatch
		}
	}
}
