package agent

// The event stream of the control socket: what happens to ports, clients
// and devices, as one JSON object per line, to every subscriber at once.
// Publishing never blocks: each subscriber has a bounded queue, and one
// that falls behind is cut off with a final overflow line.

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/vserial/vserial/internal/guard"
)

// EventKind names an event on the stream (the "event" field).
type EventKind string

// The kinds of events. Port events carry device, port, name (when the port
// has one) and socket (when it has one).
const (
	// EventSnapshot is the first line of every stream: Status holds the
	// state of every port when the subscription started.
	EventSnapshot EventKind = "snapshot"
	// EventPortAdded: the device announced a port; HostConnected says
	// whether its host side is connected already.
	EventPortAdded EventKind = "port_added"
	// EventPortRemoved: the port is gone (unplugged, its device stopped or
	// reset it away, or the agent is closing); Reason says which.
	EventPortRemoved EventKind = "port_removed"
	// EventPortRenamed: the port's name or socket changed (the host named
	// it, or a name it waited for became free); OldName and OldSocket are
	// what it had.
	EventPortRenamed EventKind = "port_renamed"
	// EventHostConnected and EventHostDisconnected: a host program opened
	// or closed the port's chardev.
	EventHostConnected    EventKind = "host_connected"
	EventHostDisconnected EventKind = "host_disconnected"
	// EventClientConnected: a guest program connected to the socket (or,
	// in connect mode, the agent's dial of Target succeeded); PeerPID and
	// PeerUID are its credentials when the kernel gives them.
	EventClientConnected EventKind = "client_connected"
	// EventClientDisconnected: the client's session ended; Reason says why.
	EventClientDisconnected EventKind = "client_disconnected"
	// EventClientRejected: a second client was turned away; Rejected is
	// the port's running count.
	EventClientRejected EventKind = "client_rejected"
	// EventConsoleResize: the host gave a console port a size (Cols, Rows;
	// PTY when it has a terminal). A console's known size is reported right
	// after its port_added.
	EventConsoleResize EventKind = "console_resize"
	// EventDeviceReset: the driver reset the device to recover (Reason);
	// its ports are re-announced (port events follow).
	EventDeviceReset EventKind = "device_reset"
	// EventProtocolViolation: the device broke the protocol and the driver
	// isolated the message or the port without a reset (Reason says what;
	// Port when one port is concerned; Violations is the device's count).
	EventProtocolViolation EventKind = "protocol_violation"
	// EventDeviceLimited: the device asked for more DMA memory than its
	// budget allows (run --dma-budget); Reason says what the driver did
	// instead (ports capped, smaller buffer sets). Once per device and kind
	// of limit.
	EventDeviceLimited EventKind = "device_limited"
	// EventDeviceFailed: the device stopped for good (Reason); its ports
	// are removed.
	EventDeviceFailed EventKind = "device_failed"
	// EventDeviceAdded: a function appeared while the agent ran (run
	// --wait-devices) and was brought up as this device index; Reason
	// names the function. Its ports follow as port_added.
	EventDeviceAdded EventKind = "device_added"
	// EventDeviceRemoved: the agent let go of a function that is going
	// away (hot-unplugged, or taken by someone else; Reason says which);
	// its ports are removed.
	EventDeviceRemoved EventKind = "device_removed"
	// EventNodeFailed: the port's device node (run --nodes, node=on)
	// could not be made (Reason: /dev/cuse missing, the kernel refused
	// the device...); the port keeps its socket. Once per port and reason.
	EventNodeFailed EventKind = "node_failed"
	// EventOverflow is the last line a subscriber gets when it did not keep
	// up: events after it were not sent; the stream closes.
	EventOverflow EventKind = "overflow"
	// EventAgentStopping is the last line of every stream when the agent
	// shuts down.
	EventAgentStopping EventKind = "agent_stopping"
)

// Event is one line of the event stream. Fields that do not apply to the
// kind are left out of the JSON.
type Event struct {
	Event EventKind `json:"event"`
	Time  time.Time `json:"time"` // UTC, RFC 3339 with nanoseconds
	// Device and Port identify the port or device concerned.
	Device    *int    `json:"device,omitempty"`
	Port      *uint32 `json:"port,omitempty"`
	Name      string  `json:"name,omitempty"`
	Socket    string  `json:"socket,omitempty"`
	Target    string  `json:"target,omitempty"` // connect mode: the socket dialed
	OldName   string  `json:"old_name,omitempty"`
	OldSocket string  `json:"old_socket,omitempty"`
	// HostConnected is set on port_added.
	HostConnected *bool `json:"host_connected,omitempty"`
	// PeerPID and PeerUID are the client's credentials (SO_PEERCRED).
	PeerPID *int32  `json:"peer_pid,omitempty"`
	PeerUID *uint32 `json:"peer_uid,omitempty"`
	// Reason says why (removal, disconnection, reset, failure) or what (a
	// protocol violation, an overflow).
	Reason     string `json:"reason,omitempty"`
	Rejected   uint64 `json:"rejected_total,omitempty"`
	Cols       uint16 `json:"cols,omitempty"`
	Rows       uint16 `json:"rows,omitempty"`
	PTY        string `json:"pty,omitempty"`
	Violations uint64 `json:"violations,omitempty"`
	// Status is the snapshot (EventSnapshot only).
	Status *StatusReport `json:"status,omitempty"`
}

// Limits of the event stream.
const (
	// DefaultEventQueue is how many events may wait for one subscriber
	// before it is cut off with an overflow line.
	DefaultEventQueue = 256
	// MaxSubscribers bounds the event streams open at once; one more
	// request is answered with an error. MaxSubscribersPerUID bounds those
	// of one peer uid.
	MaxSubscribers = 64
	// streamGrace bounds the writes left to a stream that ends (the queued
	// events and the last line), so a stuck subscriber holds nothing.
	streamGrace = 5 * time.Second
	// snapshotWait bounds the write of a stream's snapshot: a subscriber
	// that does not read cannot hold its slot and a goroutine forever on
	// an idle agent (the default of Agent.snapWait).
	snapshotWait = 10 * time.Second
)

// subscriber is one open event stream.
type subscriber struct {
	c   net.Conn
	uid uint32      // the peer's, for the per-uid limit
	ch  chan []byte // encoded lines, newline included; closed when it ends

	// Guarded by Agent.ev.mu.
	ended  bool
	reason EventKind // EventOverflow, EventAgentStopping, or "" (client gone)
}

// events is the agent's publishing side.
type events struct {
	mu     sync.Mutex
	subs   map[*subscriber]bool
	slots  slots // the subscribers' count per uid and in all
	closed bool
	queue  int // per-subscriber queue length
}

// publish sends ev to every subscriber without blocking: one whose queue is
// full is cut off (it gets a final overflow line).
func (a *Agent) publish(ev Event) {
	e := &a.ev
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed || len(e.subs) == 0 {
		return
	}
	// The time is taken under the lock, so lines are in time order.
	ev.Time = time.Now().UTC()
	b, err := json.Marshal(ev)
	if err != nil {
		a.log.Error("event not encodable", "event", ev.Event, "err", err)
		return
	}
	b = append(b, '\n')
	for s := range e.subs {
		select {
		case s.ch <- b:
		default:
			a.endLocked(s, EventOverflow)
			a.log.Warn("event subscriber too slow; cut off with an overflow line", "queue", e.queue)
		}
	}
}

// endLocked ends s's subscription: nothing more is queued for it; its
// writer sends what is queued and the last line, within streamGrace.
// a.ev.mu is held.
func (a *Agent) endLocked(s *subscriber, why EventKind) {
	if s.ended {
		return
	}
	s.ended = true
	s.reason = why
	delete(a.ev.subs, s)
	a.ev.slots.give(s.uid)
	close(s.ch)
	if why != "" {
		s.c.SetWriteDeadline(time.Now().Add(streamGrace))
	}
}

func (a *Agent) endSubscription(s *subscriber, why EventKind) {
	a.ev.mu.Lock()
	a.endLocked(s, why)
	a.ev.mu.Unlock()
}

// closeEvents ends every stream with an agent_stopping line. Called by
// Close after the ports' removal events.
func (a *Agent) closeEvents() {
	e := &a.ev
	e.mu.Lock()
	defer e.mu.Unlock()
	e.closed = true
	for s := range e.subs {
		a.endLocked(s, EventAgentStopping)
		// Wake the client reader (the writer has its grace deadline).
		s.c.SetReadDeadline(longAgo)
	}
}

// errTooManySubscribers answers an events request beyond MaxSubscribers
// or MaxSubscribersPerUID.
var errTooManySubscribers = fmt.Errorf("too many event subscribers (at most %d per user, %d in all)", MaxSubscribersPerUID, MaxSubscribers)

// subscribe registers a stream on c for a peer of uid, or says why not. It
// returns the time of registration, which no event queued for the stream
// precedes.
func (a *Agent) subscribe(c net.Conn, uid uint32) (*subscriber, time.Time, error) {
	e := &a.ev
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil, time.Time{}, ErrClosed
	}
	if e.slots.total == 0 {
		e.slots = slots{total: MaxSubscribers, perUID: MaxSubscribersPerUID}
	}
	if !e.slots.take(uid) {
		a.ctl.refused.Add(1)
		return nil, time.Time{}, errTooManySubscribers
	}
	q := e.queue
	if q <= 0 {
		q = DefaultEventQueue
	}
	s := &subscriber{c: c, uid: uid, ch: make(chan []byte, q)}
	if e.subs == nil {
		e.subs = make(map[*subscriber]bool)
	}
	e.subs[s] = true
	return s, time.Now().UTC(), nil
}

// stream serves an events request on c from a peer of uid: the snapshot,
// then every event until the client leaves, falls behind, or the agent
// closes. It owns c.
func (a *Agent) stream(c net.Conn, uid uint32) {
	// No deadline while streaming (but for the snapshot): ending the
	// subscription sets one.
	c.SetDeadline(time.Time{})
	s, at, err := a.subscribe(c, uid)
	if err != nil {
		c.SetWriteDeadline(time.Now().Add(streamGrace))
		writeLine(c, controlError{Error: err.Error()})
		return
	}
	// The snapshot is taken after subscribing: a change that races with
	// it may show in the snapshot and again as an event, but none is lost.
	snap := Event{Event: EventSnapshot, Time: at, Status: a.statusReport()}

	// The client sends nothing more; its close (or half-close) ends the
	// subscription. Stray bytes are ignored.
	a.wg.Add(1)
	go func() {
		defer guard.Recover()
		defer a.wg.Done()
		io.Copy(io.Discard, c)
		a.endSubscription(s, "")
	}()

	c.SetWriteDeadline(time.Now().Add(a.ctl.snapWait))
	werr := writeLine(c, snap)
	ok := werr == nil
	a.ev.mu.Lock()
	if !ok {
		a.endLocked(s, "")
	} else if !s.ended {
		c.SetWriteDeadline(time.Time{}) // not the grace an ending set
	}
	a.ev.mu.Unlock()
	if !ok {
		// Debug: a client can make this happen at will (subscribe, close).
		a.log.Debug("event subscriber did not take its snapshot; stream closed", "peer_uid", uid, "err", werr)
	}
	for b := range s.ch {
		if !ok {
			continue // drained by the close of the channel
		}
		if _, err := c.Write(b); err != nil {
			ok = false
			a.endSubscription(s, "")
		}
	}
	a.ev.mu.Lock()
	why := s.reason
	a.ev.mu.Unlock()
	if ok && why != "" {
		last := Event{Event: why, Time: time.Now().UTC()}
		if why == EventOverflow {
			last.Reason = fmt.Sprintf("subscriber did not keep up: more than %d events queued; later events were not sent (subscribe again for a fresh snapshot)", cap(s.ch))
		}
		writeLine(c, last)
	}
	// Wake the reader if the client is still there.
	c.SetReadDeadline(longAgo)
}

// writeLine writes v as one JSON line.
func writeLine(c net.Conn, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = c.Write(append(b, '\n'))
	return err
}

// DeviceEvent is something that happened to a device as a whole, reported
// by the code that drives it (ReportDevice).
type DeviceEvent struct {
	// Kind is EventDeviceReset, EventProtocolViolation, EventDeviceLimited,
	// EventDeviceFailed, EventDeviceAdded, EventDeviceRemoved or
	// EventNodeFailed.
	Kind   EventKind
	Device int
	// Port is the port concerned, nil if none (or not known).
	Port *uint32
	// Reason says why the device was reset or failed, or what the
	// violation was.
	Reason string
	// Violations is the device's count of protocol violations so far (0:
	// not known).
	Violations uint64
}

// maxReason bounds the reason text of a device event (it comes from the
// driver, and describes what a possibly hostile device did).
const maxReason = 512

// ReportDevice publishes a device-level event on the event stream (and
// logs nothing: the driver has logged it). It checks ev first.
func (a *Agent) ReportDevice(ev DeviceEvent) error {
	switch ev.Kind {
	case EventDeviceReset, EventProtocolViolation, EventDeviceLimited, EventDeviceFailed, EventDeviceAdded, EventDeviceRemoved, EventNodeFailed:
	default:
		return fmt.Errorf("agent: report device event: kind %q is not a device event", ev.Kind)
	}
	if ev.Device < 0 {
		return fmt.Errorf("agent: report device event: negative device index %d", ev.Device)
	}
	if ev.Reason == "" {
		return errors.New("agent: report device event: no reason given")
	}
	reason := ev.Reason
	if len(reason) > maxReason {
		reason = strings.ToValidUTF8(reason[:maxReason], "") + "..."
	}
	dev := ev.Device
	out := Event{Event: ev.Kind, Device: &dev, Reason: reason, Violations: ev.Violations}
	if ev.Port != nil {
		id := *ev.Port
		out.Port = &id
		a.mu.Lock()
		if pt := a.ports[portKey{dev, id}]; pt != nil {
			out.Name, out.Socket = pt.name, pt.sock
		}
		a.mu.Unlock()
	}
	a.mu.Lock()
	closed := a.closed
	a.mu.Unlock()
	if closed {
		return ErrClosed
	}
	a.publish(out)
	return nil
}

// eventLocked returns an event of kind about pt, with its name and socket.
// a.mu is held.
func (pt *port) eventLocked(kind EventKind) Event {
	dev, id := pt.dev, pt.p.ID()
	ev := Event{Event: kind, Device: &dev, Port: &id, Name: pt.name, Socket: pt.sock}
	if pt.cfg.effectiveMode() == ModeConnect {
		ev.Target = pt.cfg.Target
	}
	return ev
}

// event is eventLocked for callers that do not hold a.mu.
func (pt *port) event(kind EventKind) Event {
	pt.a.mu.Lock()
	defer pt.a.mu.Unlock()
	return pt.eventLocked(kind)
}

// watchEvents publishes what the watcher sees change on pt since it last
// looked: its name or socket, and a console's size. Watcher only.
func (pt *port) watchEvents() {
	a := pt.a
	a.mu.Lock()
	if pt.gone {
		a.mu.Unlock()
		return
	}
	name, sock := pt.name, pt.sock
	var renamed *Event
	if name != pt.seenName || sock != pt.seenSock {
		ev := pt.eventLocked(EventPortRenamed)
		ev.OldName, ev.OldSocket = pt.seenName, pt.seenSock
		pt.seenName, pt.seenSock = name, sock
		renamed = &ev
	}
	var resized *Event
	if cp, ok := pt.p.(ConsolePort); ok && cp.IsConsole() {
		cols, rows := cp.Size()
		if (cols != pt.seenCols || rows != pt.seenRows) && cols != 0 && rows != 0 {
			ev := pt.eventLocked(EventConsoleResize)
			ev.Cols, ev.Rows = cols, rows
			if pt.con != nil {
				ev.PTY = pt.con.tty
			}
			resized = &ev
		}
		pt.seenCols, pt.seenRows = cols, rows
	}
	a.mu.Unlock()
	if renamed != nil {
		a.publish(*renamed)
	}
	if resized != nil {
		a.publish(*resized)
	}
}

// Subscribers returns how many event streams are open.
func (a *Agent) Subscribers() int {
	a.ev.mu.Lock()
	defer a.ev.mu.Unlock()
	return len(a.ev.subs)
}

// statusReport is the agent's answer to a status request.
func (a *Agent) statusReport() *StatusReport {
	return &StatusReport{SocketDir: a.dir, Running: true, Subscribers: a.Subscribers(), ControlRefused: a.ctl.refused.Load(),
		Ports: a.Status(), Devices: a.deviceStatus()}
}

// SetDevices gives the agent what describes its devices in the status
// report (nil: nothing). f is called without the agent's lock held, from
// the goroutine answering a status request; it must not block for long.
func (a *Agent) SetDevices(f func() []DeviceStatus) {
	a.mu.Lock()
	a.devices = f
	a.mu.Unlock()
}

// deviceStatus is what SetDevices's func says, nil without one.
func (a *Agent) deviceStatus() []DeviceStatus {
	a.mu.Lock()
	f := a.devices
	a.mu.Unlock()
	if f == nil {
		return nil
	}
	return f()
}

// added is the port_added event of pt, and the starting point of what the
// watcher compares (name, socket, console size). Called by AddPort before
// the watcher starts.
func (pt *port) added() Event {
	a := pt.a
	a.mu.Lock()
	defer a.mu.Unlock()
	ev := pt.eventLocked(EventPortAdded)
	h := pt.hostSeen
	ev.HostConnected = &h
	pt.seenName, pt.seenSock = ev.Name, ev.Socket
	return ev
}
