package agenttest

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
)

// The fake's model of QEMU must hold, or agent tests prove nothing.
func TestFakeHoldsUntilOpenAndDiscardsOnClose(t *testing.T) {
	ctx := context.Background()
	p := NewPort(3, "")
	p.Deliver([]byte("early"))
	if s := p.State(); s.Held != 5 || s.Pending != 0 {
		t.Fatalf("closed port: held %d pending %d, want 5 and 0", s.Held, s.Pending)
	}
	if err := p.SetGuestOpen(ctx, true); err != nil {
		t.Fatal(err)
	}
	var w bytes.Buffer
	if n, err := p.Recv(ctx, &w); n != 5 || err != nil || w.String() != "early" {
		t.Fatalf("Recv = %d, %v, %q", n, err, w.String())
	}
	p.Deliver([]byte("unread"))
	if err := p.SetGuestOpen(ctx, false); err != nil {
		t.Fatal(err)
	}
	s := p.State()
	if s.Stats.Discarded != 6 || s.Stats.BytesIn != 5 || s.Pending != 0 {
		t.Fatalf("after close: %+v", s)
	}
	if len(s.Opens) != 2 || !s.Opens[0] || s.Opens[1] {
		t.Fatalf("opens = %v", s.Opens)
	}
}

func TestFakeSendCountsHostDownBytes(t *testing.T) {
	ctx := context.Background()
	p := NewPort(1, "x")
	if n, err := p.Send(ctx, strings.NewReader("abc")); n != 3 || err != nil {
		t.Fatalf("Send = %d, %v", n, err)
	}
	p.SetHostConnected(true)
	p.Send(ctx, strings.NewReader("de"))
	s := p.State()
	if string(s.Sent) != "abcde" || s.SendBytesHostDown != 3 || s.SendCalls != 2 || s.Stats.BytesOut != 5 {
		t.Fatalf("state %+v", s)
	}
}

func TestFakeChangedAndRemove(t *testing.T) {
	p := NewPort(1, "")
	ch := p.Changed()
	p.SetName("n")
	select {
	case <-ch:
	default:
		t.Fatal("SetName did not fire Changed")
	}
	ch = p.Changed()
	p.Remove()
	<-ch
	if !p.Removed() || p.HostConnected() {
		t.Fatal("Remove did not mark the port removed and host-disconnected")
	}
	if _, err := p.Recv(context.Background(), &bytes.Buffer{}); !errors.Is(err, ErrRemoved) {
		t.Fatalf("Recv after Remove: %v", err)
	}
	if err := p.SetGuestOpen(context.Background(), true); !errors.Is(err, ErrRemoved) {
		t.Fatalf("SetGuestOpen after Remove: %v", err)
	}
}
