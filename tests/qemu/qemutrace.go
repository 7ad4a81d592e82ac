package qemu

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// ChrReadTrace counts QEMU's trace event virtio_console_chr_read (one per
// read of a port's chardev, host→guest) while it is on. QEMU's "log"
// trace backend writes each event as a line to its standard error, which
// the harness keeps in qemu.stderr. Each event costs QEMU's main loop a
// write(2): turn it on for a measurement of the reads, not for the rates.
type ChrReadTrace struct {
	g    *Guest
	from int64 // the size of qemu.stderr when the trace started
}

// ChrReads are the reads a ChrReadTrace saw, per port number.
type ChrReads map[int]ReadSizes

// ReadSizes are a port's chardev reads.
type ReadSizes struct {
	Count      int
	Bytes, Max int64
}

func (r ReadSizes) String() string {
	if r.Count == 0 {
		return "no reads"
	}
	return fmt.Sprintf("%d reads, mean %.0f B, max %d B", r.Count, float64(r.Bytes)/float64(r.Count), r.Max)
}

const chrReadEvent = "virtio_console_chr_read"

// StartChrReadTrace turns the event on.
func StartChrReadTrace(ctx context.Context, g *Guest) (*ChrReadTrace, error) {
	fi, err := os.Stat(filepath.Join(g.Dir, "qemu.stderr"))
	if err != nil {
		return nil, err
	}
	t := &ChrReadTrace{g: g, from: fi.Size()}
	_, err = g.QMP.Execute(ctx, "trace-event-set-state", map[string]any{"name": chrReadEvent, "enable": true})
	return t, err
}

// Stop turns the event off and counts the reads logged since the start.
// QEMU handles the QMP command in its main loop, the thread that logs the
// reads, so every read before it is in the file when it returns.
func (t *ChrReadTrace) Stop(ctx context.Context) (ChrReads, error) {
	_, err := t.g.QMP.Execute(ctx, "trace-event-set-state", map[string]any{"name": chrReadEvent, "enable": false})
	if err != nil {
		return nil, err
	}
	f, err := os.Open(filepath.Join(t.g.Dir, "qemu.stderr"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.NewSectionReader(f, t.from, 1<<40))
	if err != nil {
		return nil, err
	}
	return parseChrReads(string(b)), nil
}

// parseChrReads counts lines "[PID@TIME:]virtio_console_chr_read port N,
// size M".
func parseChrReads(log string) ChrReads {
	reads := ChrReads{}
	for _, line := range strings.Split(log, "\n") {
		_, rest, ok := strings.Cut(line, chrReadEvent+" port ")
		if !ok {
			continue
		}
		port, size, ok := strings.Cut(rest, ", size ")
		nr, err1 := strconv.Atoi(strings.TrimSpace(port))
		n, err2 := strconv.ParseInt(strings.TrimSpace(size), 10, 64)
		if !ok || err1 != nil || err2 != nil {
			continue
		}
		r := reads[nr]
		r.Count++
		r.Bytes += n
		r.Max = max(r.Max, n)
		reads[nr] = r
	}
	return reads
}
