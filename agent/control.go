package agent

import (
	"bufio"
	"bytes"
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

	"github.com/vserial/vserial/internal/guard"
)

// The control protocol: the client sends one JSON object on one line. For
// a status request the agent answers with one JSON object and closes the
// connection; for an events request it streams one JSON object per line
// (events.go) until the client closes, falls behind or the agent stops.
//
//	→ {"op":"status"}
//	← {"socket_dir":"/run/vserial","running":true,"ports":[{"device":0,"id":1,...}]}
//	→ {"op":"events"}
//	← {"event":"snapshot","time":"...","status":{"socket_dir":...,"ports":[...]}}
//	← {"event":"host_connected","time":"...","device":0,"port":1,"name":"...","socket":"..."}
//	→ {"op":"reboot"}
//	← {"error":"unknown op \"reboot\" (want status or events)"}

// ErrNotRunning is wrapped by QueryStatus when no agent answers on the
// control socket.
var ErrNotRunning = errors.New("no agent running")

// controlTimeout bounds one control exchange, so a silent client cannot
// hold a goroutine.
const controlTimeout = 10 * time.Second

// maxRequest bounds the size of a control request.
const maxRequest = 4096

// The ops of the control protocol.
const (
	OpStatus = "status"
	OpEvents = "events"
)

type controlRequest struct {
	Op string `json:"op"`
}

// StatusReport is the answer to a status request, the Status of an event
// stream's snapshot, and the "agent" object of `vserial-agent list --json`:
// the one definition of that JSON shape.
type StatusReport struct {
	SocketDir string `json:"socket_dir"`
	Running   bool   `json:"running"`         // an agent answered
	Error     string `json:"error,omitempty"` // why it could not be asked (list only)
	// Subscribers is how many event streams are open (the one asking
	// included, in a snapshot).
	Subscribers int `json:"subscribers,omitempty"`
	// ControlRefused counts the control connections and event
	// subscriptions turned away because they were beyond a limit
	// (MaxControlConns, MaxSubscribers and their per-uid forms).
	ControlRefused uint64       `json:"control_refused,omitempty"`
	Ports          []PortStatus `json:"ports"`
	// Devices describes each device the agent drives, by index: what was
	// negotiated with it (SetDevices; absent when nothing says).
	Devices []DeviceStatus `json:"devices,omitempty"`
}

// DeviceStatus describes one device: its function, how it is bound and
// the virtio features negotiated with it. The agent does not know devices;
// it reports what the func given to SetDevices returns.
type DeviceStatus struct {
	Index   int    `json:"index"`   // the D of vport<D>p<P>
	Addr    string `json:"addr"`    // PCI address of the function
	Binding string `json:"binding"` // "uio", "vfio type1", "vfio no-IOMMU" ("" if unknown)
	// Features is the negotiated feature bits, in hex ("0x...").
	Features string `json:"features"`
	// Ring is the virtqueue layout: "packed" or "split".
	Ring string `json:"ring"`
	// Flags names the negotiated features that matter to a console
	// (multiport, event_idx, indirect, emerg_write, size, version_1,
	// access_platform), in that order.
	Flags []string `json:"flags"`
}

// controlError is the answer to a request the agent refuses.
type controlError struct {
	Error string `json:"error"`
}

// ControlPath returns the path of the control socket in socketDir.
func ControlPath(socketDir string) string {
	return filepath.Join(socketDir, ControlName)
}

// ListenControl creates the control socket SOCKET_DIR/.control (with
// Config.ControlMode) for ServeControl. Close removes it.
func (a *Agent) ListenControl() (net.Listener, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return nil, ErrClosed
	}
	if a.ctlLn != nil {
		return nil, errors.New("agent: control socket already created")
	}
	ln, err := a.listenAt(filepath.Join(a.dir, ControlName), sockPerm{mode: a.ctlMode}, false)
	if err != nil {
		return nil, err
	}
	a.ctlLn = ln
	return ln, nil
}

// ServeControl answers control requests on l until l is closed or the agent
// closes (then it returns nil). Close closes l. An accept error (out of
// file descriptors and the like) is logged and retried with back-off; a
// connection beyond the limits (MaxControlConns, MaxControlConnsPerUID) is
// answered with an error line and closed.
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
	b := newBackoff(acceptWaitMin, acceptWaitMax)
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			if !acceptPause(a.ctx, b, a.ctl.acceptLog, a.log.With("socket", ControlName).Error, err) {
				return nil
			}
			continue
		}
		b.reset()
		uid := a.ctl.uidOf(c)
		if !a.takeControl(uid) {
			a.refuseControl(c, uid)
			continue
		}
		a.mu.Lock()
		if a.closed {
			a.mu.Unlock()
			a.giveControl(uid)
			c.Close()
			return nil
		}
		a.wg.Add(1)
		a.mu.Unlock()
		go func() {
			defer guard.Recover()
			defer a.wg.Done()
			a.answer(c, uid)
		}()
	}
}

// takeControl takes a control-connection slot for uid, or reports false.
func (a *Agent) takeControl(uid uint32) bool {
	a.ctl.mu.Lock()
	defer a.ctl.mu.Unlock()
	return a.ctl.slots.take(uid)
}

func (a *Agent) giveControl(uid uint32) {
	a.ctl.mu.Lock()
	a.ctl.slots.give(uid)
	a.ctl.mu.Unlock()
}

// refuseWait bounds the write of the refusal line (a fresh connection has
// room for it; a peer cannot make the accept loop wait longer).
const refuseWait = 10 * time.Millisecond

// refuseControl turns c away: the control connections of uid (or of
// everyone) are at their limit. It is counted, and logged within a rate.
func (a *Agent) refuseControl(c net.Conn, uid uint32) {
	n := a.ctl.refused.Add(1)
	msg := fmt.Sprintf("too many control connections (at most %d per user, %d in all); try again later", MaxControlConnsPerUID, MaxControlConns)
	c.SetWriteDeadline(time.Now().Add(refuseWait))
	writeLine(c, controlError{Error: msg})
	c.Close()
	if ok, held := a.ctl.refuseLog.Allow(); ok {
		a.log.Warn("control connection refused: too many at once", "peer_uid", uid, "refused_total", n, "lines_suppressed_before", held)
	}
}

// answer handles one control connection, which holds a control slot of
// uid until it ends or becomes an event stream.
func (a *Agent) answer(c net.Conn, uid uint32) {
	held := true
	release := func() {
		if held {
			held = false
			a.giveControl(uid)
		}
	}
	defer release()
	defer c.Close()
	stop := context.AfterFunc(a.ctx, func() { c.SetDeadline(longAgo) })
	defer func() { stop() }()
	c.SetDeadline(time.Now().Add(controlTimeout))
	line, err := bufio.NewReader(io.LimitReader(c, maxRequest)).ReadBytes('\n')
	if err != nil && len(line) >= maxRequest {
		writeLine(c, controlError{Error: fmt.Sprintf("bad request: longer than %d bytes", maxRequest)})
		return
	}
	if err != nil && !(errors.Is(err, io.EOF) && len(line) > 0) {
		a.log.Debug("control: bad request", "err", err)
		return
	}
	req, err := parseRequest(line)
	if err != nil {
		writeLine(c, controlError{Error: "bad request: " + err.Error()})
		return
	}
	switch req.Op {
	case OpStatus:
		writeLine(c, a.statusReport())
	case OpEvents:
		// The stream ends on its own terms when the agent closes (the
		// queued events and a last line first), not at once.
		if !stop() {
			return // the agent is closing already
		}
		// A stream counts against the subscriber limits instead.
		release()
		a.stream(c, uid)
	}
}

// parseRequest checks a request line: one JSON object with a known op and
// no other field, nothing after it.
func parseRequest(line []byte) (controlRequest, error) {
	var req controlRequest
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return req, err
	}
	if dec.More() {
		return req, errors.New("more than one JSON value on the line")
	}
	switch req.Op {
	case OpStatus, OpEvents:
		return req, nil
	case "":
		return req, errors.New(`no "op" (want status or events)`)
	}
	return req, fmt.Errorf("unknown op %q (want status or events)", req.Op)
}

// QueryStatus asks the agent serving socketDir for the state of its ports.
// It wraps ErrNotRunning when no agent answers.
func QueryStatus(ctx context.Context, socketDir string) ([]PortStatus, error) {
	rep, err := QueryReport(ctx, socketDir)
	if err != nil {
		return nil, err
	}
	return rep.Ports, nil
}

// QueryReport is QueryStatus with the whole answer (subscribers too).
func QueryReport(ctx context.Context, socketDir string) (StatusReport, error) {
	path := ControlPath(socketDir)
	c, err := dialControl(ctx, path, "query")
	if err != nil {
		return StatusReport{}, err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(longAgo) })
	defer stop()
	if _, err := c.Write([]byte(`{"op":"status"}` + "\n")); err != nil {
		return StatusReport{}, fmt.Errorf("agent: query %s: %w", path, err)
	}
	var resp StatusReport
	if err := json.NewDecoder(c).Decode(&resp); err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return StatusReport{}, fmt.Errorf("agent: query %s: %w", path, err)
	}
	if resp.Error != "" {
		return StatusReport{}, fmt.Errorf("agent: query %s: agent says: %s", path, resp.Error)
	}
	if resp.Ports == nil {
		resp.Ports = []PortStatus{}
	}
	return resp, nil
}

// dialControl connects to the control socket at path; it wraps
// ErrNotRunning when nothing listens there.
func dialControl(ctx context.Context, path, op string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("agent: %s %s: %w", op, path, ErrNotRunning)
		}
		return nil, fmt.Errorf("agent: %s %s: %w", op, path, err)
	}
	return c, nil
}
