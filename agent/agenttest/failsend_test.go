package agenttest

import (
	"context"
	"errors"
	"strings"
	"testing"
)

// FailSend must behave like the driver after a device reset, or the agent
// tests that use it prove nothing: the failure is reported once, the bytes
// of the Send that reports it are lost, and later Sends work.
func TestFakeFailSendOnce(t *testing.T) {
	ctx := context.Background()
	reset := errors.New("reset")
	p := NewPort(1, "x")
	p.SetHostConnected(true)
	if _, err := p.Send(ctx, strings.NewReader("ok")); err != nil {
		t.Fatal(err)
	}
	p.FailSend(reset)
	if n, err := p.Send(ctx, strings.NewReader("gone")); n != 0 || !errors.Is(err, reset) {
		t.Fatalf("Send after FailSend = %d, %v; want 0 and the error", n, err)
	}
	if n, err := p.Send(ctx, strings.NewReader("next")); n != 4 || err != nil {
		t.Fatalf("second Send after FailSend = %d, %v; want it to work", n, err)
	}
	if err := p.Flush(ctx); err != nil {
		t.Fatalf("Flush after the failure was reported: %v", err)
	}
	p.FailSend(reset)
	if err := p.Flush(ctx); !errors.Is(err, reset) {
		t.Fatalf("Flush with a failure pending = %v", err)
	}
	if s := p.State(); string(s.Sent) != "oknext" || s.Lost != 0 {
		t.Fatalf("sent %q lost %d, want %q and 0", s.Sent, s.Lost, "oknext")
	}
}

// A Send already waiting in its read when FailSend is called loses what
// that read returns.
func TestFakeFailSendDuringRead(t *testing.T) {
	reset := errors.New("reset")
	p := NewPort(1, "x")
	p.SetHostConnected(true)
	r := readerFunc(func(b []byte) (int, error) {
		p.FailSend(reset) // the reset lands while the read is under way
		return copy(b, "lost"), nil
	})
	if n, err := p.Send(context.Background(), r); n != 4 || !errors.Is(err, reset) {
		t.Fatalf("Send = %d, %v; want 4 and the error", n, err)
	}
	if s := p.State(); len(s.Sent) != 0 || s.Lost != 4 || s.Stats.BytesOut != 0 {
		t.Fatalf("sent %q lost %d bytes_out %d; want nothing sent, 4 lost", s.Sent, s.Lost, s.Stats.BytesOut)
	}
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(b []byte) (int, error) { return f(b) }
