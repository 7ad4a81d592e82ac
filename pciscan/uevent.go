package pciscan

// Kernel uevents for PCI functions: how a running agent learns that a
// function appeared (hot-plug), lost or gained a driver, or went away,
// without polling sysfs.

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Uevent is a kernel uevent about one PCI function.
type Uevent struct {
	// Action is the kernel's: "add", "remove", "bind", "unbind",
	// "change"... — or "overflow" when the socket dropped events and the
	// caller must look at sysfs again (Scan).
	Action string
	Addr   string // the function's address, DDDD:BB:DD.F
	// Driver is the driver of a bind or unbind ("" otherwise).
	Driver string
	// VendorDevice is PCI_ID, "VVVV:DDDD" (upper-case hex) when present.
	VendorDevice string
}

// ActionOverflow is Uevent.Action when events were lost.
const ActionOverflow = "overflow"

// Watcher receives the kernel's uevents (NETLINK_KOBJECT_UEVENT, the
// kernel's multicast group 1) and keeps those about PCI functions. Only
// messages the kernel itself sent are accepted (sender port id 0): udev
// and other processes may send on the same family. Hand-written over
// x/sys/unix: the socket is one call and a message is NUL-separated
// KEY=VALUE text (ParseUevent, fuzzed); a netlink library would add a
// module for neither.
type Watcher struct {
	f      *os.File
	closed atomic.Bool
}

// uevent socket buffer: a burst of hot-plug events (every port of every
// function) must not overflow it; the kernel caps it at rmem_max unless
// SO_RCVBUFFORCE is allowed (root).
const ueventBuffer = 1 << 20

// Watch opens the uevent socket. It needs CAP_NET_ADMIN only for the
// larger buffer; the socket works without it.
func Watch() (*Watcher, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_KOBJECT_UEVENT)
	if err != nil {
		return nil, fmt.Errorf("pciscan: uevent socket: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, ueventBuffer); err != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, ueventBuffer)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: 1}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("pciscan: uevent bind: %w", err)
	}
	return &Watcher{f: os.NewFile(uintptr(fd), "uevent")}, nil
}

// Next waits for the next PCI uevent. It returns os.ErrClosed (wrapped)
// once Close was called.
func (w *Watcher) Next() (Uevent, error) {
	rc, err := w.f.SyscallConn()
	if err != nil {
		return Uevent{}, err
	}
	buf := make([]byte, 8192)
	for {
		var n int
		var from unix.Sockaddr
		var rerr error
		err := rc.Read(func(fd uintptr) bool {
			n, from, rerr = unix.Recvfrom(int(fd), buf, 0)
			return rerr != unix.EAGAIN
		})
		if w.closed.Load() {
			return Uevent{}, fmt.Errorf("pciscan: uevent: %w", os.ErrClosed)
		}
		if err != nil {
			return Uevent{}, fmt.Errorf("pciscan: uevent: %w", err)
		}
		switch {
		case errors.Is(rerr, unix.ENOBUFS):
			return Uevent{Action: ActionOverflow}, nil
		case errors.Is(rerr, unix.EINTR):
			continue
		case rerr != nil:
			return Uevent{}, fmt.Errorf("pciscan: uevent: %w", rerr)
		}
		if nl, ok := from.(*unix.SockaddrNetlink); !ok || nl.Pid != 0 {
			continue // not from the kernel
		}
		if ev, ok := ParseUevent(buf[:n]); ok {
			return ev, nil
		}
	}
}

// Close ends the watcher; a blocked Next returns.
func (w *Watcher) Close() error {
	w.closed.Store(true)
	return w.f.Close()
}

// ParseUevent reads one kernel uevent message ("ACTION@DEVPATH" then
// NUL-separated KEY=VALUE pairs) and reports whether it is about a PCI
// function with a valid address. Anything malformed is not.
func ParseUevent(b []byte) (Uevent, bool) {
	fields := bytes.Split(bytes.TrimRight(b, "\x00"), []byte{0})
	if len(fields) < 2 || !bytes.Contains(fields[0], []byte("@")) {
		return Uevent{}, false
	}
	var ev Uevent
	var subsystem, slot string
	for _, f := range fields[1:] {
		k, v, ok := strings.Cut(string(f), "=")
		if !ok {
			continue
		}
		switch k {
		case "ACTION":
			ev.Action = v
		case "SUBSYSTEM":
			subsystem = v
		case "PCI_SLOT_NAME":
			slot = v
		case "DRIVER":
			ev.Driver = v
		case "PCI_ID":
			ev.VendorDevice = v
		}
	}
	if subsystem != "pci" || ev.Action == "" || ev.Action == ActionOverflow {
		return Uevent{}, false
	}
	addr, err := ParseAddr(slot)
	if err != nil {
		return Uevent{}, false
	}
	ev.Addr = addr
	return ev, true
}
