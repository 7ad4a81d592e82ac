package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"strings"
	"testing"
	"time"
)

// qgaPeer is the guest agent's end of a pipe, scripted by the test: it
// reads one command line at a time and writes raw replies.
type qgaPeer struct {
	t    *testing.T
	conn net.Conn
	br   *bufio.Reader
}

func newQGAPair(t *testing.T) (*QGAClient, *qgaPeer) {
	a, b := net.Pipe()
	c := NewQGAClient(a)
	t.Cleanup(func() { c.Close(); b.Close() })
	return c, &qgaPeer{t: t, conn: b, br: bufio.NewReader(b)}
}

// command reads one command; a leading sentinel byte is reported.
func (p *qgaPeer) command() (sentinel bool, cmd string, args map[string]any) {
	line, err := p.br.ReadString('\n')
	if err != nil {
		p.t.Errorf("peer: reading a command: %v", err)
		return
	}
	if strings.HasPrefix(line, "\xff") {
		sentinel, line = true, line[1:]
	}
	var m struct {
		Execute   string         `json:"execute"`
		Arguments map[string]any `json:"arguments"`
	}
	if err := json.Unmarshal([]byte(line), &m); err != nil {
		p.t.Errorf("peer: command %q: %v", line, err)
	}
	return sentinel, m.Execute, m.Arguments
}

func (p *qgaPeer) reply(raw string) {
	if _, err := p.conn.Write([]byte(raw)); err != nil {
		p.t.Errorf("peer: writing %q: %v", raw, err)
	}
}

func TestQGAClientSyncDiscardsStale(t *testing.T) {
	c, p := newQGAPair(t)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	go func() {
		_, cmd, args := p.command()
		if cmd != "guest-sync" || args["id"] != float64(42) {
			t.Errorf("peer got %s %v, want guest-sync id 42", cmd, args)
		}
		// Replies to an earlier client's commands, garbage, then ours.
		p.reply(`{"return": {}}` + "\n" + `{"return": 41}` + "\n" + "not json\n" + `{"error": {"class": "GenericError", "desc": "x"}}` + "\n" + `{"return": 42}` + "\n")
		_, cmd, _ = p.command()
		if cmd != "guest-ping" {
			t.Errorf("peer got %s, want guest-ping", cmd)
		}
		p.reply(`{"return": {}}` + "\n")
	}()
	n, err := c.Sync(ctx, 42)
	if err != nil {
		t.Fatal(err)
	}
	if n != 4 {
		t.Errorf("discarded %d replies, want 4", n)
	}
	if err := c.Execute(ctx, "guest-ping", nil, nil); err != nil {
		t.Fatal(err)
	}
}

func TestQGAClientSyncDelimited(t *testing.T) {
	c, p := newQGAPair(t)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	go func() {
		sentinel, cmd, args := p.command()
		if !sentinel || cmd != "guest-sync-delimited" || args["id"] != float64(7) {
			t.Errorf("peer got sentinel=%v %s %v, want the sentinel and guest-sync-delimited id 7", sentinel, cmd, args)
		}
		// A matching id without the sentinel is not the reply (it could be
		// an old plain guest-sync); a partial line is cut by the sentinel.
		p.reply(`{"return": 7}` + "\n" + `{"retu` + "\xff" + `{"return": 6}` + "\n" + "\xff" + `{"return": 7}` + "\n")
		_, cmd, args = p.command()
		if cmd != "guest-info" || args != nil {
			t.Errorf("peer got %s %v, want guest-info without arguments", cmd, args)
		}
		p.reply(`{"return": {"version": "7.2.0", "supported_commands": [{"name": "guest-ping", "enabled": true}]}}` + "\n")
		_, cmd, _ = p.command()
		p.reply(`{"error": {"class": "CommandNotFound", "desc": "The command ` + cmd + ` has not been found"}}` + "\n")
	}()
	n, err := c.SyncDelimited(ctx, 7)
	if err != nil {
		t.Fatal(err)
	}
	if n != 3 {
		t.Errorf("discarded %d replies, want 3", n)
	}
	var info struct {
		Version  string `json:"version"`
		Commands []struct {
			Name    string `json:"name"`
			Enabled bool   `json:"enabled"`
		} `json:"supported_commands"`
	}
	if err := c.Execute(ctx, "guest-info", nil, &info); err != nil {
		t.Fatal(err)
	}
	if info.Version != "7.2.0" || len(info.Commands) != 1 || info.Commands[0].Name != "guest-ping" || !info.Commands[0].Enabled {
		t.Errorf("guest-info decoded as %+v", info)
	}
	var qe *QGAError
	if err := c.Execute(ctx, "guest-nothing", nil, nil); !errors.As(err, &qe) || qe.Class != "CommandNotFound" || qe.Command != "guest-nothing" {
		t.Errorf("error reply: got %v", err)
	}
}

func TestQGAClientSyncRetry(t *testing.T) {
	c, p := newQGAPair(t)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	go func() {
		// The first attempt goes unanswered (nothing listens yet); its
		// reply arrives late, before the answer to the second.
		_, _, first := p.command()
		_, _, second := p.command()
		p.reply("\xff" + `{"return": ` + jsonNumber(first["id"]) + "}\n")
		p.reply("\xff" + `{"return": ` + jsonNumber(second["id"]) + "}\n")
	}()
	id, err := c.SyncRetry(ctx, 200*time.Millisecond, 100)
	if err != nil {
		t.Fatal(err)
	}
	if id != 101 {
		t.Errorf("answered id %d, want 101 (the late reply to 100 is stale)", id)
	}
}

func jsonNumber(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func TestQGAClientClosed(t *testing.T) {
	c, p := newQGAPair(t)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	go func() {
		p.command()
		p.conn.Close()
	}()
	if _, err := c.Sync(ctx, 1); err == nil || !strings.Contains(err.Error(), "connection closed") {
		t.Fatalf("sync on a closed connection: %v", err)
	}
}
