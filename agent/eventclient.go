package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
)

// maxEventLine bounds one line read from the event stream (a snapshot of
// many ports is the longest).
const maxEventLine = 16 << 20

// EventStream is the client side of an event subscription: the snapshot,
// then the events, as the agent serving a socket directory sends them.
type EventStream struct {
	path string
	ctx  context.Context
	c    net.Conn
	r    *bufio.Reader
	stop func() bool
}

// SubscribeEvents opens an event stream on the agent serving socketDir. It
// wraps ErrNotRunning when no agent answers. ctx bounds the whole
// subscription: once it ends, Next returns its error.
func SubscribeEvents(ctx context.Context, socketDir string) (*EventStream, error) {
	path := ControlPath(socketDir)
	c, err := dialControl(ctx, path, "subscribe")
	if err != nil {
		return nil, err
	}
	if _, err := c.Write([]byte(`{"op":"events"}` + "\n")); err != nil {
		c.Close()
		return nil, fmt.Errorf("agent: subscribe %s: %w", path, err)
	}
	s := &EventStream{path: path, ctx: ctx, c: c, r: bufio.NewReader(c)}
	s.stop = context.AfterFunc(ctx, func() { c.SetReadDeadline(longAgo) })
	return s, nil
}

// Next returns the next event and its line as the agent sent it (without
// the newline). It returns io.EOF when the agent ended the stream (after
// its last line, agent_stopping or overflow), the subscription's ctx error
// once it ends,
// and an error with the agent's words when it refused the subscription.
func (s *EventStream) Next() (Event, []byte, error) {
	line, err := s.readLine()
	if err != nil {
		if s.ctx.Err() != nil {
			err = s.ctx.Err()
		} else if !errors.Is(err, io.EOF) {
			err = fmt.Errorf("agent: events %s: %w", s.path, err)
		}
		return Event{}, nil, err
	}
	var probe struct {
		Event EventKind `json:"event"`
		Error *string   `json:"error"`
	}
	if err := json.Unmarshal(line, &probe); err != nil {
		return Event{}, line, fmt.Errorf("agent: events %s: bad line %q: %w", s.path, truncate(line), err)
	}
	if probe.Error != nil && probe.Event == "" {
		return Event{}, line, fmt.Errorf("agent: events %s: agent says: %s", s.path, *probe.Error)
	}
	var ev Event
	if err := json.Unmarshal(line, &ev); err != nil || ev.Event == "" {
		if err == nil {
			err = errors.New(`no "event" field`)
		}
		return Event{}, line, fmt.Errorf("agent: events %s: bad line %q: %w", s.path, truncate(line), err)
	}
	return ev, line, nil
}

func (s *EventStream) readLine() ([]byte, error) {
	var line []byte
	for {
		chunk, err := s.r.ReadSlice('\n')
		line = append(line, chunk...)
		if len(line) > maxEventLine {
			return nil, fmt.Errorf("line longer than %d bytes", maxEventLine)
		}
		switch {
		case err == nil:
			return bytes.TrimSuffix(line, []byte("\n")), nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF) && len(line) > 0:
			return nil, io.ErrUnexpectedEOF
		}
		return nil, err
	}
}

func truncate(b []byte) []byte {
	if len(b) > 120 {
		return append(b[:120:120], "..."...)
	}
	return b
}

// Close ends the subscription.
func (s *EventStream) Close() error {
	s.stop()
	return s.c.Close()
}
