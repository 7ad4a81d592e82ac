package vfio

// The request interrupt: how the kernel asks for the device back.

import (
	"fmt"
	"os"

	"github.com/vserial/vserial/internal/guard"
	"github.com/vserial/vserial/vfio/internal/vfioabi"
	"golang.org/x/sys/unix"
)

// enableRequest routes vfio-pci's request interrupt to an eventfd. The
// kernel signals it when it wants the device back — a hot-unplug (QMP
// device_del, PCIe removal) or an unbind — and waits for the device fd to
// be closed, repeating the request every few seconds ("Relaying device
// request to user"). Requested reports it; the owner then closes the
// function, which lets the removal finish. A kernel without the index
// (count 0) leaves Requested nil.
func (f *Function) enableRequest() error {
	ii, err := f.sys.irqInfo(f.devFD, vfioabi.PCIReqIRQ)
	if err != nil || ii.Count == 0 || ii.Flags&vfioabi.IRQInfoEventfd == 0 {
		f.log.Debug("vfio: no request interrupt; an unplug waits for the agent to exit", "addr", f.addr, "err", err)
		return nil
	}
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return fmt.Errorf("request eventfd: %w", err)
	}
	if err := f.sys.setIRQs(f.devFD, vfioabi.PCIReqIRQ, 0, []int32{int32(fd)}); err != nil {
		unix.Close(fd)
		return fmt.Errorf("request interrupt: %w", err)
	}
	f.req = os.NewFile(uintptr(fd), "vfio-request")
	f.requested = make(chan struct{})
	go f.awaitRequest(f.req, f.requested)
	return nil
}

// awaitRequest closes requested when the kernel signals the request
// eventfd; it ends without closing it when the eventfd is closed.
func (f *Function) awaitRequest(req *os.File, requested chan struct{}) {
	defer guard.Recover()
	var b [8]byte
	if n, err := req.Read(b[:]); err == nil && n == 8 {
		f.log.Warn("vfio: the kernel asks for the device back (unplug or unbind)", "addr", f.addr)
		close(requested)
	}
}

// Requested is closed when the kernel asks for the function back (it is
// being hot-unplugged or unbound): the owner must stop the device and
// Close the function, which lets the removal complete. Nil when the
// kernel offers no request interrupt.
func (f *Function) Requested() <-chan struct{} { return f.requested }
