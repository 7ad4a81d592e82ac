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
// The agent flushes for a bounded time (--shutdown-flush) what it read
// from clients, then counts and logs what the device never took: every
// byte it read is with the host or in that count (issue 10 item 9).
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

	// The log: the client's session ends with the reason, and the bytes
	// the agent had read from it but the device never took are counted
	// (issue 10 item 9): everything the agent read is either with the host
	// or in that count.
	if !hasLogLine(out, `msg="client gone"`, `why="agent closing"`) {
		t.Errorf("no `client gone why=\"agent closing\"` line for the client cut off at shutdown")
	}
	undelivered, delivered, ok := undeliveredLine(out, name)
	if !ok {
		t.Fatalf("no `not delivered` line counting port %s's bytes lost at shutdown", name)
	}
	read := delivered + undelivered
	t.Logf("agent: read %d bytes from the client, the device took %d, %d not delivered", read, delivered, undelivered)
	if undelivered == 0 {
		t.Errorf("undelivered 0 with the transmit ring full: the count misses the bytes in flight")
	}
	if got < delivered || got > read {
		t.Errorf("host got %d bytes; want between what the device took (%d) and what the agent read (%d)", got, delivered, read)
	}
	if handed >= 0 && read > handed {
		t.Errorf("agent read %d bytes, more than the %d the client wrote", read, handed)
	}
}

// undeliveredLine finds the driver's count of a port's guest→host bytes
// that never reached the device: undelivered and delivered bytes.
func undeliveredLine(log, name string) (undelivered, delivered int64, ok bool) {
	re := regexp.MustCompile(`not delivered.*name=` + regexp.QuoteMeta(name) + `.*undelivered=(\d+).*delivered=(\d+)`)
	for line := range strings.Lines(log) {
		if m := re.FindStringSubmatch(line); m != nil {
			u, _ := strconv.ParseInt(m[1], 10, 64)
			d, _ := strconv.ParseInt(m[2], 10, 64)
			return u, d, true
		}
	}
	return 0, 0, false
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
