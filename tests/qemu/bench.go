package qemu

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/vserial/vserial/tests/qemu/internal/wire"
)

// Measurement is what MeasurePort reports for one port.
type Measurement struct {
	// HostToGuest is measured by the guest, GuestToHost by the host; both
	// from the first byte received to the last.
	HostToGuest, GuestToHost Transfer
	RoundTrips               RoundTrips
}

func (m Measurement) String() string {
	s := fmt.Sprintf("host→guest %.1f MB/s, guest→host %.1f MB/s (%d bytes each way); 1-byte round trip mean %.0f µs, p99 %.0f µs (%d)",
		m.HostToGuest.MBps, m.GuestToHost.MBps, m.HostToGuest.Bytes, m.RoundTrips.MeanUS, m.RoundTrips.P99US, m.RoundTrips.Count)
	if m.HostToGuest.Nudges > 0 {
		s += fmt.Sprintf("; host→guest stalled in QEMU, its main loop woken %d times (nudge.go)", m.HostToGuest.Nudges)
	}
	return s
}

// MeasureConfig sizes a measurement; zero fields take the defaults.
type MeasureConfig struct {
	// Bytes moved each way (default 64 MiB).
	Bytes int64
	// RoundTrips is the number of 1-byte ping-pongs (default 2000).
	RoundTrips int
}

// MeasurePort measures one port: bulk throughput host→guest, then
// guest→host, then 1-byte round-trip latency. conn is the host side (the
// port's chardev socket), guestPath the guest side: /dev/vportNpM for the
// in-kernel driver, /run/vserial/NAME for vserial-agent. The guest does no
// per-byte work beyond the transfer (no hashing); the host checks the
// guest→host data.
func MeasurePort(ctx context.Context, g *Guest, conn net.Conn, guestPath string, cfg MeasureConfig) (Measurement, error) {
	if cfg.Bytes == 0 {
		cfg.Bytes = 64 << 20
	}
	if cfg.RoundTrips == 0 {
		cfg.RoundTrips = 2000
	}
	var m Measurement
	var err error
	if m.HostToGuest, err = benchToGuest(ctx, g, conn, guestPath, cfg.Bytes, false); err != nil {
		return m, fmt.Errorf("host→guest: %w", err)
	}
	if m.GuestToHost, err = benchFromGuest(ctx, g, conn, guestPath, cfg.Bytes, 7, false); err != nil {
		return m, fmt.Errorf("guest→host: %w", err)
	}
	if m.RoundTrips, err = PingPong(ctx, g, conn, guestPath, cfg.RoundTrips); err != nil {
		return m, fmt.Errorf("round trips: %w", err)
	}
	return m, nil
}

func patternBlock(seed uint64) []byte {
	b := make([]byte, wire.BlockSize)
	_, _ = io.ReadFull(wire.Pattern(seed), b)
	return b
}

// clientArgs appends "raw" to a guest client's arguments when raw is set:
// the client then uses a blocking descriptor and raw system calls, as a
// client written in C would, instead of Go's poller.
func clientArgs(raw bool, argv ...string) []string {
	if raw {
		argv = append(argv, "raw")
	}
	return argv
}

// benchToGuest streams n bytes of a repeated block once the guest's sink
// has the port; the guest only counts (with raw, on a blocking descriptor:
// clientArgs). The transfer's QEMU is QEMU's threads from the sink's ready
// byte to the host's last write (then at most a socket buffer is left to
// move).
func benchToGuest(ctx context.Context, g *Guest, conn net.Conn, guestPath string, n int64, raw bool) (Transfer, error) {
	defer deadline(ctx, conn)()
	p, err := g.Start(ctx, clientArgs(raw, "sink", guestPath, strconv.FormatInt(n, 10), "count", "ready")...)
	if err != nil {
		return Transfer{}, err
	}
	if err := awaitReady(conn); err != nil {
		out, werr := p.Wait(ctx)
		return Transfer{}, fmt.Errorf("%w (sink: %v %s)", err, werr, strings.TrimSpace(out))
	}
	block := patternBlock(3)
	type written struct {
		qemu ThreadLoad
		err  error
	}
	wc := make(chan written, 1)
	watch := watchStall(ctx, g, n)
	go func() {
		t0 := SampleThreads(g.QEMUPid())
		for left := n; left > 0; {
			k := min(int64(len(block)), left)
			if _, err := conn.Write(block[:k]); err != nil {
				wc <- written{err: err}
				return
			}
			left -= k
			watch.moved.Add(k)
		}
		wc <- written{qemu: SampleThreads(g.QEMUPid()).Since(t0)}
	}()
	out, err := p.Wait(ctx)
	nudges := watch.stop()
	if err != nil {
		_ = conn.SetDeadline(time.Unix(1, 0))
		<-wc
		return Transfer{}, err
	}
	w := <-wc
	if w.err != nil {
		return Transfer{}, fmt.Errorf("host write: %w", w.err)
	}
	tr, err := parseTransfer(out)
	if err == nil && tr.Bytes != n {
		err = fmt.Errorf("guest counted %d bytes, host sent %d", tr.Bytes, n)
	}
	tr.QEMU, tr.Nudges = w.qemu, nudges
	return tr, err
}

// benchFromGuest has the guest send n bytes of a repeated block and checks
// each byte on the host against the same block (raw: clientArgs). The
// transfer's QEMU is QEMU's threads from the first byte to the last.
func benchFromGuest(ctx context.Context, g *Guest, conn net.Conn, guestPath string, n int64, seed uint64, raw bool) (Transfer, error) {
	defer deadline(ctx, conn)()
	block := patternBlock(seed)
	type result struct {
		tr  Transfer
		err error
	}
	rc := make(chan result, 1)
	go func() {
		var t0 ThreadSample
		first, last, err := readBlocks(conn, n, block, func() { t0 = SampleThreads(g.QEMUPid()) })
		if err != nil {
			rc <- result{err: err}
			return
		}
		tr := Transfer{Bytes: n, SHA256: "none", Secs: last.Sub(first).Seconds(), QEMU: SampleThreads(g.QEMUPid()).Since(t0)}
		if tr.Secs > 0 {
			tr.MBps = float64(n) / tr.Secs / 1e6
		}
		rc <- result{tr: tr}
	}()
	_, err := g.Run(ctx, clientArgs(raw, "source", guestPath, strconv.FormatInt(n, 10), strconv.FormatUint(seed, 10), "block")...)
	if err != nil {
		_ = conn.SetDeadline(time.Unix(1, 0))
		<-rc
		return Transfer{}, err
	}
	r := <-rc
	return r.tr, r.err
}

// readBlocks reads n bytes from conn, checks that they repeat block, and
// returns when the first and the last byte arrived. atFirst, if not nil,
// is called when the first byte has arrived.
func readBlocks(conn net.Conn, n int64, block []byte, atFirst func()) (first, last time.Time, err error) {
	buf := make([]byte, 256<<10)
	var got int64
	for got < n {
		k, err := conn.Read(buf[:min(int64(len(buf)), n-got)])
		if k > 0 && got == 0 {
			first = time.Now()
			if atFirst != nil {
				atFirst()
			}
		}
		for i := 0; i < k; {
			off := int((got + int64(i)) % int64(len(block)))
			run := min(k-i, len(block)-off)
			if !bytes.Equal(buf[i:i+run], block[off:off+run]) {
				return first, last, fmt.Errorf("data differs from the pattern within bytes [%d,%d)", got+int64(i), got+int64(i+run))
			}
			i += run
		}
		got += int64(k)
		if err != nil {
			return first, last, fmt.Errorf("host read after %d of %d bytes: %w", got, n, err)
		}
	}
	return first, time.Now(), nil
}
