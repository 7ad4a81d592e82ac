package qemu

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/vserial/vserial/tests/qemu/internal/wire"
)

// NodeProbe is the guest's semantics probe ("probe-serve PATH SOCK", see
// tests/qemu/guest/probecmds.go) holding one port's device file: each Step
// is one guest command, so the host can change the port's host side
// between steps.
type NodeProbe struct {
	g    *Guest
	sock string
	proc *Proc
}

// StartNodeProbe starts probe-serve for the device file dev, answering on
// the guest Unix socket sock.
func StartNodeProbe(ctx context.Context, g *Guest, dev, sock string) (*NodeProbe, error) {
	p, err := g.Start(ctx, "probe-serve", dev, sock)
	if err != nil {
		return nil, err
	}
	if err := g.WaitPath(ctx, sock, 30*time.Second); err != nil {
		return nil, err
	}
	return &NodeProbe{g: g, sock: sock, proc: p}, nil
}

// Step runs one probe step (OP ARGS...) and returns what it saw.
func (p *NodeProbe) Step(ctx context.Context, argv ...string) (wire.ProbeResult, error) {
	out, err := p.g.Run(ctx, append([]string{"probe", p.sock}, argv...)...)
	if err != nil {
		return wire.ProbeResult{}, err
	}
	return parseProbe(out)
}

// StepStart starts a step that may block (a read waiting for data, a
// write waiting for the host) without waiting for it; StepWait collects it.
func (p *NodeProbe) StepStart(ctx context.Context, argv ...string) (*Proc, error) {
	return p.g.Start(ctx, append([]string{"probe", p.sock}, argv...)...)
}

// StepWait waits for a step started with StepStart.
func StepWait(ctx context.Context, pr *Proc) (wire.ProbeResult, error) {
	out, err := pr.Wait(ctx)
	if err != nil {
		return wire.ProbeResult{}, err
	}
	return parseProbe(out)
}

// Stop ends probe-serve (the held descriptor is closed with it).
func (p *NodeProbe) Stop(ctx context.Context) error {
	if _, err := p.g.Run(ctx, "probe", p.sock, "quit"); err != nil {
		return err
	}
	_, err := p.proc.Wait(ctx)
	return err
}

func parseProbe(out string) (wire.ProbeResult, error) {
	var r wire.ProbeResult
	if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &r); err != nil {
		return r, fmt.Errorf("probe printed %q: %w", out, err)
	}
	return r, nil
}

// HostEnd is the host side of one port: QEMU's chardev socket, which the
// test connects and disconnects to move the port between host states.
type HostEnd struct {
	sock string
	c    net.Conn
}

// NewHostEnd is the host side of the port whose chardev listens on sock;
// it starts disconnected.
func NewHostEnd(sock string) *HostEnd { return &HostEnd{sock: sock} }

// Connect connects to the chardev (the guest sees the host open the port).
func (h *HostEnd) Connect() error {
	if h.c != nil {
		return nil
	}
	c, err := net.Dial("unix", h.sock)
	if err != nil {
		return err
	}
	h.c = c
	return nil
}

// Disconnect closes the connection (the guest sees the host close the port).
func (h *HostEnd) Disconnect() error {
	if h.c == nil {
		return nil
	}
	err := h.c.Close()
	h.c = nil
	return err
}

// Send writes b to the port.
func (h *HostEnd) Send(b []byte) error {
	if h.c == nil {
		return fmt.Errorf("host end of %s not connected", h.sock)
	}
	_, err := h.c.Write(b)
	return err
}

// Recv reads exactly n bytes from the port within timeout.
func (h *HostEnd) Recv(n int, timeout time.Duration) ([]byte, error) {
	if h.c == nil {
		return nil, fmt.Errorf("host end of %s not connected", h.sock)
	}
	_ = h.c.SetReadDeadline(time.Now().Add(timeout))
	defer h.c.SetReadDeadline(time.Time{})
	b := make([]byte, n)
	k, err := io.ReadFull(h.c, b)
	return b[:k], err
}

// Nothing reports whether nothing arrives from the port within d.
func (h *HostEnd) Nothing(d time.Duration) ([]byte, bool) {
	if h.c == nil {
		return nil, true
	}
	_ = h.c.SetReadDeadline(time.Now().Add(d))
	defer h.c.SetReadDeadline(time.Time{})
	b := make([]byte, 4096)
	k, _ := h.c.Read(b)
	return b[:k], k == 0
}

// RecvPattern reads n bytes and checks them against wire.Pattern(seed);
// it returns where they first differ, or -1.
func (h *HostEnd) RecvPattern(n int64, seed uint64, timeout time.Duration) (int, error) {
	got, err := h.Recv(int(n), timeout)
	want := make([]byte, n)
	_, _ = wire.Pattern(seed).Read(want)
	if m := wire.Mismatch(got, want[:len(got)]); m >= 0 {
		return m, err
	}
	if err == nil && !bytes.Equal(got, want) {
		return len(got), nil
	}
	return -1, err
}
