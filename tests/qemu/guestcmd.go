package qemu

// Commands in the guest: the guest helper reads them from its console
// and answers there (@@VS lines: PID, OUT, END), so a test starts, waits
// for and reads guest programs over the one serial line.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/vserial/vserial/tests/qemu/internal/wire"
)

// readConsole hands each line of QEMU's standard output (the guest's
// console) to consoleLine until QEMU exits, then records how it exited.
func (g *Guest) readConsole(stdout io.Reader) {
	br := bufio.NewReaderSize(stdout, 64<<10)
	for {
		line, err := br.ReadString('\n')
		if line != "" {
			g.consoleLine(line)
		}
		if err != nil {
			break
		}
	}
	err := g.cmd.Wait()
	g.mu.Lock()
	g.exitErr = err
	g.mu.Unlock()
	close(g.exited)
}

// consoleLine logs a console line and delivers the guest helper's reply
// in it, if any, to the call waiting for it.
func (g *Guest) consoleLine(line string) {
	_, _ = g.conLog.WriteString(line)
	r, ok, err := wire.ParseReply(line)
	g.mu.Lock()
	defer g.mu.Unlock()
	if !ok || err != nil {
		g.tail = append(g.tail, strings.TrimRight(line, "\r\n"))
		if len(g.tail) > 400 {
			g.tail = g.tail[len(g.tail)-300:]
		}
		return
	}
	if r.Kind == wire.KindReady {
		select {
		case <-g.ready:
		default:
			close(g.ready)
		}
		return
	}
	c := g.calls[r.ID]
	if c == nil {
		return
	}
	switch r.Kind {
	case wire.KindPID:
		c.pid <- r.Int
	case wire.KindOut:
		c.out.Write(r.Data)
	case wire.KindEnd:
		c.code = r.Int
		delete(g.calls, r.ID)
		entry := fmt.Sprintf("#%d %s → exit %d (%v)", r.ID, shellJoin(c.argv), c.code, time.Since(c.start).Round(time.Millisecond))
		if c.code != 0 {
			out := c.out.String()
			if len(out) > 4096 {
				out = "..." + out[len(out)-4096:]
			}
			entry += "\n\t" + strings.ReplaceAll(strings.TrimSpace(out), "\n", "\n\t")
		}
		g.transcript = append(g.transcript, entry)
		close(c.done)
	}
}

// Proc is a command started in the guest.
type Proc struct {
	g   *Guest
	id  uint64
	c   *call
	Pid int
}

// Start runs argv in the guest without waiting for it to finish. argv[0] is
// a helper built-in (see tests/qemu/guest) or a program in the guest's PATH.
func (g *Guest) Start(ctx context.Context, argv ...string) (*Proc, error) {
	if len(argv) == 0 {
		return nil, errors.New("guest: empty command")
	}
	c := &call{argv: argv, start: time.Now(), pid: make(chan int, 1), done: make(chan struct{})}
	g.mu.Lock()
	g.nextID++
	id := g.nextID
	g.calls[id] = c
	g.mu.Unlock()
	line := wire.Command{ID: id, Background: true, Argv: argv}.Encode()
	g.wmu.Lock()
	_, err := io.WriteString(g.stdin, line)
	g.wmu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("guest: sending %q: %w", argv[0], err)
	}
	p := &Proc{g: g, id: id, c: c}
	select {
	case p.Pid = <-c.pid:
		return p, nil
	case <-c.done: // could not start
		return p, p.result()
	case <-g.exited:
		return nil, ErrGuestExited
	case <-ctx.Done():
		return nil, fmt.Errorf("guest: starting %s: %w", strings.Join(argv, " "), ctx.Err())
	}
}

func (p *Proc) result() error {
	if p.c.code != 0 {
		return &ExitError{Argv: p.c.argv, Code: p.c.code, Output: p.c.out.String()}
	}
	return nil
}

// Exited reports whether the command has finished.
func (p *Proc) Exited() bool {
	select {
	case <-p.c.done:
		return true
	default:
		return false
	}
}

// Wait waits for the command to finish and returns its combined output;
// the error is an *ExitError when it exited non-zero.
func (p *Proc) Wait(ctx context.Context) (string, error) {
	select {
	case <-p.c.done:
		return p.c.out.String(), p.result()
	case <-p.g.exited:
		return "", ErrGuestExited
	case <-ctx.Done():
		return "", fmt.Errorf("guest: waiting for %s: %w", strings.Join(p.c.argv, " "), ctx.Err())
	}
}

// Run runs argv in the guest and returns its combined output.
func (g *Guest) Run(ctx context.Context, argv ...string) (string, error) {
	p, err := g.Start(ctx, argv...)
	if err != nil {
		return "", err
	}
	return p.Wait(ctx)
}

// MustRun runs argv and fails the test if it does not exit 0.
func (g *Guest) MustRun(t testing.TB, argv ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	out, err := g.Run(ctx, argv...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}
