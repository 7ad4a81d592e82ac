package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"time"

	"github.com/vserial/vserial"
	"github.com/vserial/vserial/tests/qemu/internal/wire"
)

// openVserial opens a "vserial:BIND/ADDR/NAME[/POLL]" path (without its
// prefix).
func openVserial(spec string) (io.ReadWriteCloser, error) {
	bind, addr, name, poll, ok := wire.ParseVserialPath(spec)
	if !ok {
		return nil, fmt.Errorf("%s%s: want %sBIND/ADDR/NAME[/POLL]", wire.VserialPrefix, spec, wire.VserialPrefix)
	}
	// The library wants two Ps (its package documentation).
	if runtime.GOMAXPROCS(0) < 2 {
		runtime.GOMAXPROCS(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a, err := vserial.Open(ctx, vserial.Options{Devices: []string{addr}, Bind: bind, Poll: poll})
	if err != nil {
		return nil, err
	}
	c, err := a.Dial(ctx, name)
	if err != nil {
		a.Close()
		return nil, err
	}
	return &heldPort{Conn: c, a: a}, nil
}

// heldPort is a port held in-process with the Agent that holds it.
type heldPort struct {
	net.Conn
	a *vserial.Agent
}

// Close closes the port (after the device took every byte written) and
// gives the function back.
func (h *heldPort) Close() error {
	err := h.Conn.Close()
	return errors.Join(err, h.a.Close())
}
