package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// QMP is a small client for QEMU's machine protocol: commands, and every
// asynchronous event kept in order so tests can wait for one that happened
// after a point they marked.
type QMP struct {
	conn net.Conn
	wmu  sync.Mutex // one command in flight

	mu      sync.Mutex
	changed chan struct{} // closed and replaced whenever events or replies arrive
	events  []Event
	replies []qmpReply
	stale   int   // replies still owed to commands that gave up waiting
	err     error // reader stopped
}

// Event is one QMP event.
type Event struct {
	Name string          `json:"event"`
	Data json.RawMessage `json:"data"`
	// Time is when the host received it.
	Time time.Time `json:"-"`
}

// QMPError is an error reply to a command.
type QMPError struct {
	Command string
	Class   string `json:"class"`
	Desc    string `json:"desc"`
}

func (e *QMPError) Error() string { return fmt.Sprintf("qmp %s: %s: %s", e.Command, e.Class, e.Desc) }

type qmpReply struct {
	Return json.RawMessage `json:"return"`
	Error  *QMPError       `json:"error"`
}

// DialQMP connects to a QMP Unix socket, retrying until ctx is done (QEMU
// creates the socket shortly after it starts), and negotiates capabilities.
func DialQMP(ctx context.Context, path string) (*QMP, error) {
	var conn net.Conn
	for {
		var err error
		var d net.Dialer
		if conn, err = d.DialContext(ctx, "unix", path); err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("qmp: dial %s: %w", path, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	q := &QMP{conn: conn, changed: make(chan struct{})}
	go q.read()
	if _, err := q.Execute(ctx, "qmp_capabilities", nil); err != nil {
		conn.Close()
		return nil, err
	}
	return q, nil
}

func (q *QMP) read() {
	sc := bufio.NewScanner(q.conn)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		var msg struct {
			Event  *string         `json:"event"`
			Data   json.RawMessage `json:"data"`
			Return json.RawMessage `json:"return"`
			Error  *QMPError       `json:"error"`
			QMP    json.RawMessage `json:"QMP"`
		}
		if err := json.Unmarshal(sc.Bytes(), &msg); err != nil {
			continue
		}
		q.mu.Lock()
		switch {
		case msg.QMP != nil: // greeting
		case msg.Event != nil:
			q.events = append(q.events, Event{Name: *msg.Event, Data: msg.Data, Time: time.Now()})
		default:
			q.replies = append(q.replies, qmpReply{Return: msg.Return, Error: msg.Error})
		}
		close(q.changed)
		q.changed = make(chan struct{})
		q.mu.Unlock()
	}
	q.mu.Lock()
	q.err = errors.Join(errors.New("qmp: connection closed"), sc.Err())
	close(q.changed)
	q.changed = make(chan struct{})
	q.mu.Unlock()
}

// Execute runs a command with arguments (nil or anything that marshals to
// a JSON object) and returns its "return" value.
func (q *QMP) Execute(ctx context.Context, cmd string, args any) (json.RawMessage, error) {
	q.wmu.Lock()
	defer q.wmu.Unlock()
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	if _, err := q.conn.Write(append(b, '\n')); err != nil {
		return nil, fmt.Errorf("qmp %s: %w", cmd, err)
	}
	for {
		q.mu.Lock()
		for q.stale > 0 && len(q.replies) > 0 {
			q.replies = q.replies[1:]
			q.stale--
		}
		if len(q.replies) > 0 {
			r := q.replies[0]
			q.replies = q.replies[1:]
			q.mu.Unlock()
			if r.Error != nil {
				r.Error.Command = cmd
				return nil, r.Error
			}
			return r.Return, nil
		}
		ch, rerr := q.changed, q.err
		q.mu.Unlock()
		if rerr != nil {
			return nil, fmt.Errorf("qmp %s: %w", cmd, rerr)
		}
		select {
		case <-ch:
		case <-ctx.Done():
			q.mu.Lock()
			q.stale++
			q.mu.Unlock()
			return nil, fmt.Errorf("qmp %s: %w", cmd, ctx.Err())
		}
	}
}

// Mark returns a position in the event history; WaitEvent looks only at
// events from there on.
func (q *QMP) Mark() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.events)
}

// Events returns a copy of every event received so far.
func (q *QMP) Events() []Event {
	q.mu.Lock()
	defer q.mu.Unlock()
	return append([]Event(nil), q.events...)
}

// WaitEvent returns the first event at or after mark with the given name
// for which match (if not nil) returns true, and the mark just after it.
func (q *QMP) WaitEvent(ctx context.Context, mark int, name string, match func(Event) bool) (Event, int, error) {
	for {
		q.mu.Lock()
		for i := mark; i < len(q.events); i++ {
			if e := q.events[i]; e.Name == name && (match == nil || match(e)) {
				q.mu.Unlock()
				return e, i + 1, nil
			}
		}
		ch, rerr := q.changed, q.err
		q.mu.Unlock()
		if rerr != nil {
			return Event{}, mark, fmt.Errorf("qmp: waiting for %s: %w", name, rerr)
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return Event{}, mark, fmt.Errorf("qmp: waiting for %s: %w", name, ctx.Err())
		}
	}
}

// PortChange is the data of a VSERPORT_CHANGE event: the guest opened or
// closed the virtserialport whose device id is ID.
type PortChange struct {
	ID   string `json:"id"`
	Open bool   `json:"open"`
}

// WaitPortChange waits for VSERPORT_CHANGE of port device id with the given
// open state, at or after mark.
func (q *QMP) WaitPortChange(ctx context.Context, mark int, id string, open bool) (int, error) {
	_, next, err := q.WaitEvent(ctx, mark, "VSERPORT_CHANGE", func(e Event) bool {
		var pc PortChange
		return json.Unmarshal(e.Data, &pc) == nil && pc.ID == id && pc.Open == open
	})
	return next, err
}

// Close closes the connection.
func (q *QMP) Close() error { return q.conn.Close() }
