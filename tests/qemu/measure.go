package qemu

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/vserial/vserial/tests/qemu/internal/wire"
)

// The functions here move data between a host port socket and a path in
// the guest, check it byte for byte (sha256 of wire.Pattern) and measure
// it. The guest path is a device file of the in-kernel driver
// (/dev/vportNpM) or a Unix socket of vserial-agent: the same measurement
// runs against both.

// Transfer is the result of one checked bulk transfer.
type Transfer struct {
	Bytes  int64
	SHA256 string
	// Secs and MBps are measured by the receiver, from its first byte to
	// its last.
	Secs float64
	MBps float64
	// QEMU is the load of QEMU's threads over the transfer, sampled on
	// the host (benchToGuest and benchFromGuest only).
	QEMU ThreadLoad
	// Nudges counts the times QEMU's main loop had to be woken because the
	// host's bytes stopped moving (benchToGuest only; nudge.go).
	Nudges int
}

// RoundTrips are 1-byte round-trip latencies measured by the guest.
type RoundTrips struct {
	Count                     int
	MeanUS, P50US, P99US, Max float64
}

// ParseKV parses the "key=value key=value" lines the guest helper prints.
func ParseKV(out string) map[string]string {
	kv := map[string]string{}
	for _, f := range strings.Fields(out) {
		if k, v, ok := strings.Cut(f, "="); ok {
			kv[k] = v
		}
	}
	return kv
}

func patternSum(n int64, seed uint64) (string, error) {
	h := sha256.New()
	if _, err := io.CopyN(h, wire.Pattern(seed), n); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func deadline(ctx context.Context, c net.Conn) func() {
	if d, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(d)
	}
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	return func() { stop(); _ = c.SetDeadline(time.Time{}) }
}

// SendToGuest writes n pattern bytes into conn while the guest reads them
// from guestPath ("sink"), and checks what the guest received.
func SendToGuest(ctx context.Context, g *Guest, conn net.Conn, guestPath string, n int64, seed uint64) (Transfer, error) {
	want, err := patternSum(n, seed)
	if err != nil {
		return Transfer{}, err
	}
	defer deadline(ctx, conn)()
	p, err := g.Start(ctx, "sink", guestPath, strconv.FormatInt(n, 10), "ready")
	if err != nil {
		return Transfer{}, err
	}
	// Write only once the sink has the port: bytes sent while the previous
	// client of the port is still leaving would be discarded with it.
	if err := awaitReady(conn); err != nil {
		out, werr := p.Wait(ctx)
		return Transfer{}, fmt.Errorf("%w (sink: %v %s)", err, werr, strings.TrimSpace(out))
	}
	werr := make(chan error, 1)
	go func() {
		_, err := io.CopyN(conn, wire.Pattern(seed), n)
		werr <- err
	}()
	out, err := p.Wait(ctx)
	if err != nil {
		_ = conn.SetDeadline(time.Unix(1, 0)) // unblock the writer
		<-werr
		return Transfer{}, err
	}
	if err := <-werr; err != nil {
		return Transfer{}, fmt.Errorf("host write: %w", err)
	}
	tr, err := parseTransfer(out)
	if err != nil {
		return tr, err
	}
	if tr.Bytes != n || tr.SHA256 != want {
		return tr, fmt.Errorf("host→guest %d bytes: guest got %d bytes sha256 %s, sent sha256 %s", n, tr.Bytes, tr.SHA256, want)
	}
	return tr, nil
}

// ReceiveFromGuest has the guest write n pattern bytes to guestPath
// ("source") and reads and checks them from conn.
func ReceiveFromGuest(ctx context.Context, g *Guest, conn net.Conn, guestPath string, n int64, seed uint64) (Transfer, error) {
	want, err := patternSum(n, seed)
	if err != nil {
		return Transfer{}, err
	}
	defer deadline(ctx, conn)()
	type result struct {
		tr  Transfer
		err error
	}
	rc := make(chan result, 1)
	go func() {
		h := sha256.New()
		buf := make([]byte, 256<<10)
		var got int64
		var first time.Time
		for got < n {
			k, err := conn.Read(buf[:min(int64(len(buf)), n-got)])
			if k > 0 && got == 0 {
				first = time.Now()
			}
			h.Write(buf[:k])
			got += int64(k)
			if err != nil {
				rc <- result{err: fmt.Errorf("host read after %d of %d bytes: %w", got, n, err)}
				return
			}
		}
		tr := Transfer{Bytes: got, SHA256: hex.EncodeToString(h.Sum(nil))}
		if !first.IsZero() {
			tr.Secs = time.Since(first).Seconds()
		}
		if tr.Secs > 0 {
			tr.MBps = float64(got) / tr.Secs / 1e6
		}
		rc <- result{tr: tr}
	}()
	out, err := g.Run(ctx, "source", guestPath, strconv.FormatInt(n, 10), strconv.FormatUint(seed, 10))
	if err != nil {
		_ = conn.SetDeadline(time.Unix(1, 0))
		<-rc
		return Transfer{}, err
	}
	r := <-rc
	if r.err != nil {
		return r.tr, r.err
	}
	sent := ParseKV(out)["sha256"]
	if sent != want {
		return r.tr, fmt.Errorf("guest source sha256 %s, expected %s (pattern mismatch between host and guest)", sent, want)
	}
	if r.tr.SHA256 != want {
		return r.tr, fmt.Errorf("guest→host %d bytes: host got sha256 %s, guest sent %s", n, r.tr.SHA256, want)
	}
	return r.tr, nil
}

// PingPong has the guest send count single bytes through guestPath, each
// echoed by the host on conn before the next, and returns the round trips
// the guest measured.
func PingPong(ctx context.Context, g *Guest, conn net.Conn, guestPath string, count int) (RoundTrips, error) {
	rt, _, err := pingPong(ctx, g, conn, guestPath, count, false, false)
	return rt, err
}

// PingPongSamples is PingPong that also returns every round trip, in µs,
// in the order measured. With raw the guest's client uses blocking raw
// system calls on its descriptor, as a client written in C would, instead
// of Go's poller (whose runtime threads wake around each call: on one vCPU
// each such wake-up during a relay's round trip is a process switch); the
// in-process library's path (vserial:) is not affected.
func PingPongSamples(ctx context.Context, g *Guest, conn net.Conn, guestPath string, count int, raw bool) (RoundTrips, []float64, error) {
	return pingPong(ctx, g, conn, guestPath, count, true, raw)
}

func pingPong(ctx context.Context, g *Guest, conn net.Conn, guestPath string, count int, samples, raw bool) (RoundTrips, []float64, error) {
	defer deadline(ctx, conn)()
	echoed := make(chan error, 1)
	go func() {
		var b [1]byte
		for range count {
			if _, err := io.ReadFull(conn, b[:]); err != nil {
				echoed <- err
				return
			}
			if _, err := conn.Write(b[:]); err != nil {
				echoed <- err
				return
			}
		}
		echoed <- nil
	}()
	argv := []string{"pingpong", guestPath, strconv.Itoa(count)}
	if samples {
		argv = append(argv, "samples")
	}
	out, err := g.Run(ctx, clientArgs(raw, argv...)...)
	if err != nil {
		_ = conn.SetDeadline(time.Unix(1, 0))
		<-echoed
		return RoundTrips{}, nil, err
	}
	if err := <-echoed; err != nil {
		return RoundTrips{}, nil, fmt.Errorf("host echo: %w", err)
	}
	kv := ParseKV(out)
	var rt RoundTrips
	var errs []error
	num := func(k string) float64 {
		v, err := strconv.ParseFloat(kv[k], 64)
		errs = append(errs, err)
		return v
	}
	rt.Count = int(num("count"))
	rt.MeanUS, rt.P50US, rt.P99US, rt.Max = num("mean_us"), num("p50_us"), num("p99_us"), num("max_us")
	if err := errors.Join(errs...); err != nil {
		return rt, nil, fmt.Errorf("pingpong output %q: %w", out, err)
	}
	if !samples {
		return rt, nil, nil
	}
	xs, err := parseSamples(kv["samples_us"])
	if err == nil && len(xs) != count {
		err = fmt.Errorf("%d samples for %d round trips", len(xs), count)
	}
	return rt, xs, err
}

func parseTransfer(out string) (Transfer, error) {
	kv := ParseKV(out)
	var tr Transfer
	var err1, err2, err3 error
	tr.Bytes, err1 = strconv.ParseInt(kv["bytes"], 10, 64)
	tr.Secs, err2 = strconv.ParseFloat(kv["secs"], 64)
	tr.MBps, err3 = strconv.ParseFloat(kv["mbps"], 64)
	tr.SHA256 = kv["sha256"]
	if err := errors.Join(err1, err2, err3); err != nil || tr.SHA256 == "" {
		return tr, fmt.Errorf("guest transfer output %q: %v", out, err)
	}
	return tr, nil
}

// awaitReady reads the sink's wire.SinkReady byte from conn.
func awaitReady(conn net.Conn) error {
	var b [1]byte
	if _, err := io.ReadFull(conn, b[:]); err != nil {
		return fmt.Errorf("waiting for the guest sink's ready byte: %w", err)
	}
	if b[0] != wire.SinkReady {
		return fmt.Errorf("the host got %#x before the guest sink's ready byte (a byte of an earlier transfer?)", b[0])
	}
	return nil
}
