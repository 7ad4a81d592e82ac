package main

import (
	"bytes"
	"io"
	"testing"

	"github.com/vserial/vserial/tests/qemu/internal/wire"
)

func TestDuplexBothWays(t *testing.T) {
	out := captureStdout(t)
	sock, conns := peer(t)
	const nin, nout = 300001, 200003
	got := make(chan []byte, 1)
	go func() {
		c := <-conns
		go io.CopyN(c, wire.Pattern(7), nin)
		b, _ := io.ReadAll(c)
		got <- b
	}()
	if err := duplex([]string{sock, "300001", "7", "200003", "8"}); err != nil {
		t.Fatalf("duplex: %v (%s)", err, out)
	}
	want := make([]byte, nout)
	wire.Pattern(8).Read(want)
	if b := <-got; !bytes.Equal(b, want) {
		t.Errorf("peer got %d bytes, not the %d of the pattern", len(b), nout)
	}
	m := kv(out.String())
	if m["in"] != "300001" || m["in_mismatch"] != "-1" || m["in_err"] != "none" || m["out"] != "200003" || m["out_err"] != "none" {
		t.Errorf("report %q", out)
	}
}

// A peer that sends a gap and then ends early: the report says where the
// stream left the pattern and that it ended, and duplex fails.
func TestDuplexReportsGapAndEarlyEnd(t *testing.T) {
	out := captureStdout(t)
	sock, conns := peer(t)
	go func() {
		c := <-conns
		b := make([]byte, 5000)
		wire.Pattern(3).Read(b)
		c.Write(b[:1000])
		c.Write(b[1100:]) // 100 bytes missing
		c.Close()
	}()
	if err := duplex([]string{sock, "10000", "3", "0", "1"}); err == nil {
		t.Fatalf("duplex succeeded on a short stream: %s", out)
	}
	m := kv(out.String())
	if m["in"] != "4900" || m["in_mismatch"] != "1000" || m["in_err"] != "EOF" || m["out"] != "0" || m["out_err"] != "none" {
		t.Errorf("report %q, want in=4900 in_mismatch=1000 in_err=EOF out=0", out)
	}
}
