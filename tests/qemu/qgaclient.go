package qemu

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// QGAClient speaks the QEMU guest agent protocol (JSON commands, one reply
// per command, qga/qapi-schema.json) over the host side of the
// org.qemu.guest_agent.0 chardev, as libvirt does.
//
// The stream carries no request ids, so a client that connects (or times
// out) cannot tell an old reply from a new one: it first synchronises with
// guest-sync or guest-sync-delimited and a fresh id, discarding everything
// until the reply that echoes that id, and only then runs commands.
type QGAClient struct {
	conn      net.Conn
	frames    chan qgaFrame
	quit      chan struct{} // closed by Close: the reader stops
	closeOnce sync.Once
	done      chan struct{}
	err       error // why frames closed; read after done is closed
}

// qgaFrame is one unit of the reply stream: a line (without its newline),
// or the 0xFF sentinel guest-sync-delimited puts before its reply.
type qgaFrame struct {
	delim bool
	line  []byte
}

// QGASentinel is the byte a client sends to make the guest agent drop any
// partial input, and that the agent puts before the reply to
// guest-sync-delimited.
const QGASentinel = 0xFF

// QGAError is an error reply.
type QGAError struct {
	Command string
	Class   string `json:"class"`
	Desc    string `json:"desc"`
}

func (e *QGAError) Error() string { return fmt.Sprintf("qga %s: %s: %s", e.Command, e.Class, e.Desc) }

// NewQGAClient starts reading replies from conn. Close closes conn.
func NewQGAClient(conn net.Conn) *QGAClient {
	c := &QGAClient{conn: conn, frames: make(chan qgaFrame, 64), quit: make(chan struct{}), done: make(chan struct{})}
	go c.read()
	return c
}

func (c *QGAClient) read() {
	defer close(c.done)
	defer close(c.frames)
	br := bufio.NewReader(c.conn)
	var line []byte
	emit := func(f qgaFrame) bool {
		select {
		case c.frames <- f:
			return true
		case <-c.quit:
			c.err = net.ErrClosed
			return false
		}
	}
	for {
		b, err := br.ReadByte()
		if err != nil {
			c.err = err
			return
		}
		switch b {
		case QGASentinel:
			// A sentinel ends whatever partial line came before it.
			if len(bytes.TrimSpace(line)) > 0 && !emit(qgaFrame{line: line}) {
				return
			}
			line = nil
			if !emit(qgaFrame{delim: true}) {
				return
			}
		case '\n':
			if !emit(qgaFrame{line: line}) {
				return
			}
			line = nil
		default:
			if len(line) > 16<<20 {
				c.err = errors.New("qga: reply line longer than 16 MiB")
				return
			}
			line = append(line, b)
		}
	}
}

// Close closes the connection and stops the reader.
func (c *QGAClient) Close() error {
	var err error
	c.closeOnce.Do(func() {
		close(c.quit)
		err = c.conn.Close()
	})
	return err
}

// next returns the next frame, or an error when the stream ended or ctx is
// done.
func (c *QGAClient) next(ctx context.Context) (qgaFrame, error) {
	select {
	case f, ok := <-c.frames:
		if !ok {
			<-c.done
			return qgaFrame{}, fmt.Errorf("qga: connection closed: %w", c.err)
		}
		return f, nil
	case <-ctx.Done():
		return qgaFrame{}, ctx.Err()
	}
}

func (c *QGAClient) send(ctx context.Context, prefix []byte, cmd string, args any) error {
	msg := map[string]any{"execute": cmd}
	if args != nil {
		msg["arguments"] = args
	}
	b, err := json.Marshal(msg)
	if err != nil {
		return err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = c.conn.SetWriteDeadline(dl)
	}
	_, err = c.conn.Write(append(append(prefix, b...), '\n'))
	if err != nil {
		return fmt.Errorf("qga %s: %w", cmd, err)
	}
	return nil
}

type qgaReply struct {
	Return json.RawMessage `json:"return"`
	Error  *QGAError       `json:"error"`
}

// Sync sends guest-sync with id and reads until the reply that echoes id,
// discarding stale replies and anything that is not JSON. It returns the
// number of replies discarded.
func (c *QGAClient) Sync(ctx context.Context, id int64) (discarded int, err error) {
	return c.sync(ctx, "guest-sync", nil, id, false)
}

// SyncDelimited is Sync with guest-sync-delimited: it first sends the
// sentinel byte so the agent drops any partial command, and takes as the
// reply only a JSON line right after a sentinel that echoes id.
func (c *QGAClient) SyncDelimited(ctx context.Context, id int64) (discarded int, err error) {
	return c.sync(ctx, "guest-sync-delimited", []byte{QGASentinel}, id, true)
}

func (c *QGAClient) sync(ctx context.Context, cmd string, prefix []byte, id int64, delimited bool) (int, error) {
	if err := c.send(ctx, prefix, cmd, map[string]any{"id": id}); err != nil {
		return 0, err
	}
	discarded := 0
	afterDelim := false
	for {
		f, err := c.next(ctx)
		if err != nil {
			return discarded, fmt.Errorf("qga %s %d: %w (%d replies discarded)", cmd, id, err, discarded)
		}
		if f.delim {
			afterDelim = true
			continue
		}
		var r qgaReply
		candidate := !delimited || afterDelim
		afterDelim = false
		if len(bytes.TrimSpace(f.line)) == 0 {
			continue
		}
		if candidate && json.Unmarshal(f.line, &r) == nil && r.Error == nil && r.Return != nil {
			var got int64
			if json.Unmarshal(r.Return, &got) == nil && got == id {
				return discarded, nil
			}
		}
		discarded++
	}
}

// SyncRetry synchronises with guest-sync-delimited, sending a new id every
// attempt until one is answered or ctx is done: the first ids may be lost
// while nothing in the guest listens yet (the agent has not dialled
// qemu-ga, or qemu-ga restarted). It returns the id that was answered.
func (c *QGAClient) SyncRetry(ctx context.Context, attempt time.Duration, firstID int64) (int64, error) {
	for id := firstID; ; id++ {
		actx, cancel := context.WithTimeout(ctx, attempt)
		_, err := c.SyncDelimited(actx, id)
		cancel()
		if err == nil {
			return id, nil
		}
		if ctx.Err() != nil || !errors.Is(err, context.DeadlineExceeded) {
			return 0, err
		}
	}
}

// Execute runs cmd with args (nil for none) and decodes the reply's return
// value into result (nil to ignore it). Call it after a Sync: it takes the
// next reply as the answer. An error reply is a *QGAError.
func (c *QGAClient) Execute(ctx context.Context, cmd string, args, result any) error {
	if err := c.send(ctx, nil, cmd, args); err != nil {
		return err
	}
	for {
		f, err := c.next(ctx)
		if err != nil {
			return fmt.Errorf("qga %s: %w", cmd, err)
		}
		if f.delim || len(bytes.TrimSpace(f.line)) == 0 {
			continue
		}
		var r qgaReply
		if err := json.Unmarshal(f.line, &r); err != nil {
			return fmt.Errorf("qga %s: reply is not JSON: %w: %q", cmd, err, f.line)
		}
		if r.Error != nil {
			r.Error.Command = cmd
			return r.Error
		}
		if r.Return == nil {
			return fmt.Errorf("qga %s: reply has neither return nor error: %q", cmd, f.line)
		}
		if result == nil {
			return nil
		}
		if err := json.Unmarshal(r.Return, result); err != nil {
			return fmt.Errorf("qga %s: return value: %w: %s", cmd, err, r.Return)
		}
		return nil
	}
}
