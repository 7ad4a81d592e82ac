package supervisor

import (
	"context"
	"errors"
	"log/slog"
	"syscall"
	"testing"
	"time"

	"github.com/vserial/vserial/cuse"
	"github.com/vserial/vserial/driver"
	"github.com/vserial/vserial/driver/drivertest"
	"github.com/vserial/vserial/driver/virtiotest"
	"github.com/vserial/vserial/internal/portnode"
	"github.com/vserial/vserial/pump"
)

// A port with a device node has one holder, whichever of the node's
// opener and an in-process Dial comes first: a Dial while a program holds
// the node fails and leaves the port open for that program; a node open
// while a Dial holds the port gets EBUSY.
func TestDialAndNodeShareOneHolder(t *testing.T) {
	m := virtiotest.NewConsole(virtiotest.ConsoleConfig{})
	if err := m.Plug(1, "p", false); err != nil {
		t.Fatal(err)
	}
	if err := m.HostConnect(1, true); err != nil {
		t.Fatal(err)
	}
	f, err := virtiotest.New(m, virtiotest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	if _, err := f.IRQ().PollFDs(); err != nil {
		t.Fatal(err)
	}
	d, err := driver.Open(ctx, drivertest.Function(f), driver.Config{ExternalLoop: true})
	if err != nil {
		t.Fatal(err)
	}
	l, err := pump.New(d, pump.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		l.Close()
		d.Close()
	}()
	var p *driver.Port
	for p == nil || p.Name() == "" {
		if ctx.Err() != nil {
			t.Fatal("port 1 never appeared")
		}
		p = d.Port(1)
		time.Sleep(time.Millisecond)
	}
	log := slog.New(slog.DiscardHandler)
	sp := &sockPort{Port: p, loop: l, log: log, node: portnode.NewPort(p, l, log)}
	s := &Supervisor{log: log, changed: make(chan struct{}), helds: map[*Held]bool{}}

	// A program holds the node: Dial fails, and the port stays open.
	fh, e := sp.node.Open(ctx, cuse.Request{})
	if e != 0 {
		t.Fatalf("node open: %v", e)
	}
	if err := m.WaitFor(ctx, func() bool { return m.GuestConnected(1) }); err != nil {
		t.Fatal(err)
	}
	if h, err := s.take(ctx, sp, "p"); err == nil {
		h.Close()
		t.Fatal("Dial took a port a program holds through its node")
	} else if !errors.Is(err, portnode.ErrHeldByNode) {
		t.Errorf("Dial of a node-held port: %v, want ErrHeldByNode", err)
	}
	time.Sleep(50 * time.Millisecond) // a PORT_OPEN 0 would have reached the fake by now
	if !m.GuestConnected(1) {
		t.Fatal("the failed Dial closed the port under the node's holder")
	}
	if n, e := sp.node.Write(ctx, cuse.Request{FH: fh}, []byte("still mine")); n != 10 || e != 0 {
		t.Errorf("node write after the failed Dial: %d %v", n, e)
	}
	sp.node.Release(cuse.Request{FH: fh})

	// Now a Dial holds the port: the node's open is refused.
	var h *Held
	for {
		h, err = s.take(ctx, sp, "p")
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("Dial after the node closed: %v", err)
		}
		time.Sleep(10 * time.Millisecond) // the node's release finishes in the background
	}
	if _, e := sp.node.Open(ctx, cuse.Request{}); e != syscall.EBUSY {
		t.Errorf("node open while a Dial holds the port: %v, want EBUSY", e)
	}
	if err := h.Close(); err != nil {
		t.Errorf("Held.Close: %v", err)
	}
	if err := m.WaitFor(ctx, func() bool { return !m.GuestConnected(1) }); err != nil {
		t.Fatal("the host never saw the port close after the Dial's conn closed")
	}
}
