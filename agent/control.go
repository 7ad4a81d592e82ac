package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"path/filepath"
	"syscall"
	"time"
)

// The control protocol: the client sends one JSON object on one line, the
// agent answers with one JSON object and closes the connection.
//
//	→ {"op":"status"}
//	← {"ports":[{"device":0,"id":1,"name":"org.qemu.guest_agent.0",...}]}
//	← {"error":"unknown op \"x\""}

// ErrNotRunning is wrapped by QueryStatus when no agent answers on the
// control socket.
var ErrNotRunning = errors.New("no agent running")

// controlTimeout bounds one control exchange, so a silent client cannot
// hold a goroutine.
const controlTimeout = 10 * time.Second

// maxRequest bounds the size of a control request.
const maxRequest = 4096

type controlRequest struct {
	Op string `json:"op"`
}

type controlResponse struct {
	Ports []PortStatus `json:"ports"`
	Error string       `json:"error,omitempty"`
}

// ControlPath returns the path of the control socket in socketDir.
func ControlPath(socketDir string) string {
	return filepath.Join(socketDir, ControlName)
}

// ListenControl creates the control socket SOCKET_DIR/.control (with the
// sockets' mode) for ServeControl. Close removes it.
func (a *Agent) ListenControl() (net.Listener, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return nil, ErrClosed
	}
	if a.ctlLn != nil {
		return nil, errors.New("agent: control socket already created")
	}
	ln, err := a.listen(ControlName)
	if err != nil {
		return nil, err
	}
	a.ctlLn = ln
	return ln, nil
}

// ServeControl answers control requests on l until l is closed or the agent
// closes (then it returns nil). Close closes l.
func (a *Agent) ServeControl(l net.Listener) error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		l.Close()
		return ErrClosed
	}
	a.controls[l] = true
	a.wg.Add(1)
	a.mu.Unlock()
	defer a.wg.Done()
	defer func() {
		a.mu.Lock()
		delete(a.controls, l)
		a.mu.Unlock()
	}()
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("agent: control: %w", err)
		}
		a.mu.Lock()
		if a.closed {
			a.mu.Unlock()
			c.Close()
			return nil
		}
		a.wg.Add(1)
		a.mu.Unlock()
		go func() {
			defer a.wg.Done()
			a.answer(c)
		}()
	}
}

// answer handles one control connection.
func (a *Agent) answer(c net.Conn) {
	defer c.Close()
	stop := context.AfterFunc(a.ctx, func() { c.SetDeadline(longAgo) })
	defer stop()
	c.SetDeadline(time.Now().Add(controlTimeout))
	var req controlRequest
	var resp controlResponse
	line, err := bufio.NewReader(io.LimitReader(c, maxRequest)).ReadBytes('\n')
	if err != nil && !(errors.Is(err, io.EOF) && len(line) > 0) {
		a.log.Debug("control: bad request", "err", err)
		return
	}
	if err := json.Unmarshal(line, &req); err != nil {
		resp.Error = "bad request: " + err.Error()
	} else {
		switch req.Op {
		case "status":
			resp.Ports = a.Status()
		default:
			resp.Error = fmt.Sprintf("unknown op %q", req.Op)
		}
	}
	b, _ := json.Marshal(resp)
	c.Write(append(b, '\n'))
}

// QueryStatus asks the agent serving socketDir for the state of its ports.
// It wraps ErrNotRunning when no agent answers.
func QueryStatus(ctx context.Context, socketDir string) ([]PortStatus, error) {
	path := ControlPath(socketDir)
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("agent: query %s: %w", path, ErrNotRunning)
		}
		return nil, fmt.Errorf("agent: query %s: %w", path, err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(longAgo) })
	defer stop()
	if _, err := c.Write([]byte(`{"op":"status"}` + "\n")); err != nil {
		return nil, fmt.Errorf("agent: query %s: %w", path, err)
	}
	var resp controlResponse
	if err := json.NewDecoder(c).Decode(&resp); err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return nil, fmt.Errorf("agent: query %s: %w", path, err)
	}
	if resp.Error != "" {
		return nil, fmt.Errorf("agent: query %s: agent says: %s", path, resp.Error)
	}
	if resp.Ports == nil {
		resp.Ports = []PortStatus{}
	}
	return resp.Ports, nil
}
