// Package agenttest provides a fake agent.Port for tests of the agent and of
// the command that wires it.
//
// The fake models what QEMU and the driver do that the agent can observe:
// host→guest bytes sent while the guest has the port closed stay with the
// host until the guest opens it; closing the port discards received bytes
// nobody read; Send records whether the host was connected when bytes were
// taken (QEMU would have dropped them otherwise). Production code never
// imports it (layering_test.go).
package agenttest

import (
	"bytes"
	"context"
	"errors"
	"io"
	"sync"
	"testing"

	"github.com/vserial/vserial/agent"
)

// ErrRemoved is returned by the fake's methods once Remove was called.
var ErrRemoved = errors.New("agenttest: port removed")

// Port is a fake agent.Port. The zero value is not usable; call NewPort.
type Port struct {
	id uint32

	mu      sync.Mutex
	name    string
	host    bool
	removed bool
	open    bool
	changed chan struct{} // closed at the next Changed-worthy event
	update  chan struct{} // closed at any state change (for Wait)
	held    [][]byte      // host→guest, held by the host while the guest port is closed
	rx      [][]byte      // host→guest, received by the guest, not yet read
	out     bytes.Buffer  // guest→host bytes taken by Send
	st      State
	bufSize int
	openErr error
	sendErr error // FailSend's error, not reported yet
	noKeep  bool
	console bool
	cols    uint16
	rows    uint16
}

// State is a snapshot of the fake, for assertions and Wait conditions.
type State struct {
	Name          string
	HostConnected bool
	Removed       bool
	GuestOpen     bool
	// Opens lists every SetGuestOpen value in order.
	Opens []bool
	// Sent is every guest→host byte Send took, in order.
	Sent []byte
	// SendCalls counts calls to Send; SendBytesHostDown counts bytes Send
	// took while the host was disconnected (which QEMU would drop).
	SendCalls         int
	SendBytesHostDown int
	Flushes           int
	// Lost counts guest→host bytes a Send read but dropped because of
	// FailSend (the bytes a device reset loses).
	Lost int
	// Held and Pending count host→guest bytes held by the host and
	// received but unread.
	Held, Pending int
	Stats         agent.PortStats
}

// NewPort returns a fake port with the given id and name ("" for none yet),
// host disconnected.
func NewPort(id uint32, name string) *Port {
	return &Port{id: id, name: name, changed: make(chan struct{}), update: make(chan struct{}), bufSize: 4096}
}

var _ agent.ConsolePort = (*Port)(nil)

// IsConsole implements agent.ConsolePort.
func (p *Port) IsConsole() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.console
}

// Size implements agent.ConsolePort.
func (p *Port) Size() (cols, rows uint16) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cols, p.rows
}

// SetConsole makes the port a console, as CONSOLE_PORT does; like the
// driver, it opens the port towards the host at once.
func (p *Port) SetConsole() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.console = true
	if !p.open {
		p.open = true
		p.rx = append(p.rx, p.held...)
		p.st.Pending += p.st.Held
		p.held, p.st.Held = nil, 0
	}
	p.bumpLocked(true)
}

// SetSize sets the console size, as RESIZE does.
func (p *Port) SetSize(cols, rows uint16) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cols, p.rows = cols, rows
	p.bumpLocked(true)
}

// ID implements agent.Port.
func (p *Port) ID() uint32 { return p.id }

// Name implements agent.Port.
func (p *Port) Name() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.name
}

// HostConnected implements agent.Port.
func (p *Port) HostConnected() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.host
}

// Removed implements agent.Port.
func (p *Port) Removed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.removed
}

// Changed implements agent.Port.
func (p *Port) Changed() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.changed
}

// Stats implements agent.Port.
func (p *Port) Stats() agent.PortStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.st.Stats
}

// bumpLocked wakes Wait callers; fire also wakes Changed waiters.
func (p *Port) bumpLocked(fire bool) {
	close(p.update)
	p.update = make(chan struct{})
	if fire {
		close(p.changed)
		p.changed = make(chan struct{})
	}
}

// SetName gives the port a name, as PORT_NAME does.
func (p *Port) SetName(name string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.name = name
	p.bumpLocked(true)
}

// SetHostConnected changes the host side's state, as PORT_OPEN from the
// device does.
func (p *Port) SetHostConnected(c bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.host = c
	p.bumpLocked(true)
}

// Remove marks the port hot-unplugged.
func (p *Port) Remove() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.removed = true
	p.host = false
	p.bumpLocked(true)
}

// SetBufSize sets how many bytes one Send reads at most (default 4096).
func (p *Port) SetBufSize(n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.bufSize = n
}

// KeepSent sets whether Send keeps the bytes it takes for State().Sent
// (default true); benchmarks turn it off and rely on Stats.BytesOut.
func (p *Port) KeepSent(keep bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.noKeep = !keep
}

// FailOpen makes SetGuestOpen(true) fail with err (nil: succeed again).
func (p *Port) FailOpen(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.openErr = err
}

// FailSend makes the port lose bytes the way the driver does when the
// device is reset under a stream (driver.ErrDeviceReset): the next Send
// returns err, once; if that Send read bytes, they are dropped (counted in
// State.Lost). A Send that is already waiting in its read when FailSend is
// called fails when the read returns. Flush returns err too, once, if no
// Send has reported it. Later calls work again.
func (p *Port) FailSend(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.sendErr = err
	p.bumpLocked(false)
}

// Deliver sends host→guest bytes. While the guest has the port closed the
// host holds them, as QEMU does; they are received when the guest opens it.
func (p *Port) Deliver(b []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	c := bytes.Clone(b)
	if p.open {
		p.rx = append(p.rx, c)
		p.st.Pending += len(c)
	} else {
		p.held = append(p.held, c)
		p.st.Held += len(c)
	}
	p.bumpLocked(false)
}

// State returns a snapshot.
func (p *Port) State() State {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stateLocked()
}

func (p *Port) stateLocked() State {
	s := p.st
	s.Name, s.HostConnected, s.Removed, s.GuestOpen = p.name, p.host, p.removed, p.open
	s.Opens = append([]bool(nil), p.st.Opens...)
	s.Sent = bytes.Clone(p.out.Bytes())
	return s
}

// Wait blocks until cond holds for a snapshot, or ctx ends.
func (p *Port) Wait(ctx context.Context, cond func(State) bool) (State, error) {
	for {
		p.mu.Lock()
		s := p.stateLocked()
		ch := p.update
		p.mu.Unlock()
		if cond(s) {
			return s, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return s, ctx.Err()
		}
	}
}

// Recv implements agent.Port.
func (p *Port) Recv(ctx context.Context, w io.Writer) (int, error) {
	for {
		p.mu.Lock()
		if p.removed {
			p.mu.Unlock()
			return 0, ErrRemoved
		}
		if len(p.rx) > 0 {
			chunk := p.rx[0]
			p.rx = p.rx[1:]
			p.st.Pending -= len(chunk)
			p.mu.Unlock()
			n, err := w.Write(chunk)
			p.mu.Lock()
			p.st.Stats.BytesIn += uint64(n)
			p.st.Stats.Discarded += uint64(len(chunk) - n)
			p.bumpLocked(false)
			p.mu.Unlock()
			return n, err
		}
		ch := p.update
		p.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

// Send implements agent.Port.
func (p *Port) Send(ctx context.Context, r io.Reader) (int, error) {
	p.mu.Lock()
	if p.removed {
		p.mu.Unlock()
		return 0, ErrRemoved
	}
	if err := p.sendErr; err != nil {
		p.sendErr = nil
		p.st.SendCalls++
		p.bumpLocked(false)
		p.mu.Unlock()
		return 0, err
	}
	buf := make([]byte, p.bufSize)
	p.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	n, err := r.Read(buf)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.st.SendCalls++
	if ferr := p.sendErr; ferr != nil {
		p.sendErr = nil
		p.st.Lost += max(n, 0)
		p.bumpLocked(false)
		return n, ferr
	}
	if n > 0 {
		if !p.noKeep {
			p.out.Write(buf[:n])
		}
		p.st.Stats.BytesOut += uint64(n)
		if !p.host {
			p.st.SendBytesHostDown += n
		}
	}
	p.bumpLocked(false)
	return n, err
}

// Flush implements agent.Port.
func (p *Port) Flush(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.st.Flushes++
	p.bumpLocked(false)
	if err := p.sendErr; err != nil {
		p.sendErr = nil
		return err
	}
	if p.removed {
		return ErrRemoved
	}
	return ctx.Err()
}

// SetGuestOpen implements agent.Port.
func (p *Port) SetGuestOpen(ctx context.Context, open bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.removed {
		return ErrRemoved
	}
	if open && p.openErr != nil {
		return p.openErr
	}
	p.st.Opens = append(p.st.Opens, open)
	p.open = open
	if open {
		p.rx = append(p.rx, p.held...)
		p.st.Pending += p.st.Held
		p.held, p.st.Held = nil, 0
	} else {
		p.st.Stats.Discarded += uint64(p.st.Pending)
		p.rx, p.st.Pending = nil, 0
	}
	p.bumpLocked(false)
	return nil
}

// NextEvent reads s until an event of kind want and returns it; it fails
// the test at the end of the stream. Events skipped are logged.
func NextEvent(t testing.TB, s *agent.EventStream, want agent.EventKind) agent.Event {
	t.Helper()
	for {
		ev, line, err := s.Next()
		if err != nil {
			t.Fatalf("waiting for %s: %v", want, err)
		}
		if ev.Event == want {
			return ev
		}
		t.Logf("skipping %s", line)
	}
}
