package driver

import (
	"errors"
	"fmt"

	"github.com/vserial/vserial/ring"
)

// Fault is a deliberate breach of the virtio rules by the driver, committed
// by InjectFault so that tests can watch a real device refuse it and the
// driver recover.
type Fault uint8

const (
	// FaultZeroLength posts a transmit descriptor of length 0. QEMU
	// refuses zero-sized buffers (virtqueue_map_desc): it marks the
	// device broken and, for a virtio 1.x device, sets DEVICE_NEEDS_RESET
	// and raises a configuration interrupt. A legacy device only goes
	// quiet, which no driver can notice.
	FaultZeroLength Fault = iota + 1
	// FaultAddress posts a 4096-byte transmit descriptor at a device
	// address the driver never mapped. Behind an IOMMU the translation
	// fails and the device must refuse the buffer (DEVICE_NEEDS_RESET);
	// without one the device reads whatever lies there.
	FaultAddress
)

func (f Fault) String() string {
	switch f {
	case FaultZeroLength:
		return "zero-length"
	case FaultAddress:
		return "address"
	}
	return fmt.Sprintf("Fault(%d)", uint8(f))
}

// ParseFault is the inverse of Fault.String.
func ParseFault(s string) (Fault, error) {
	for _, f := range []Fault{FaultZeroLength, FaultAddress} {
		if f.String() == s {
			return f, nil
		}
	}
	return 0, fmt.Errorf("driver: unknown fault %q (want zero-length or address)", s)
}

// ErrNoSuchPort is returned by InjectFault for an id without a live port.
var ErrNoSuchPort = errors.New("driver: no such port")

// injectedLen is the length of a FaultAddress descriptor.
const injectedLen = 4096

// InjectFault commits f on the transmitq of port id: one descriptor that a
// correct device must refuse, published and kicked at once. addr is the
// device address FaultAddress points at (ignored otherwise). The device's
// refusal arrives as DEVICE_NEEDS_RESET and is recovered from like any
// other device fault (a reset, counted in DeviceStats.Resets). A device
// that returns the descriptor as used instead has accepted what it should
// have refused: that is logged as an error and counted in
// DeviceStats.InjectedAccepted, and is not a device violation.
//
// It exists for recovery tests (vserial-agent calls it only when built
// with -tags faultinject) and is never used on the data path.
func (d *Device) InjectFault(id uint32, f Fault, addr uint64) error {
	seg := ring.Segment{Addr: addr, Len: injectedLen}
	switch f {
	case FaultZeroLength:
		seg = ring.Segment{Addr: 0, Len: 0}
	case FaultAddress:
	default:
		return fmt.Errorf("driver: inject: unknown fault %d", f)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.broken() {
		return ErrClosed
	}
	if id >= uint32(len(d.slots)) || d.slots[id] == nil || d.slots[id].port == nil || d.slots[id].port.removed {
		return fmt.Errorf("%w: %d", ErrNoSuchPort, id)
	}
	s := d.slots[id]
	// With transmit buffers in place the reap path looks the head up
	// instead of calling any used buffer a violation.
	if err := d.ensureTxLocked(s); err != nil {
		return err
	}
	head, err := s.tx.Add([]ring.Segment{seg})
	if err != nil {
		return fmt.Errorf("driver: inject %v on port %d: %w", f, id, err)
	}
	s.txByHead[head] = injectedMark
	s.injectedOut++
	// Ask for a transmit interrupt until the device has answered, so a
	// device that uses the descriptor is noticed without waiting for the
	// port's next write (transmit interrupts are otherwise off while no
	// writer waits).
	s.tx.EnableInterrupts()
	d.stats.Injected++
	d.log.Warn("virtio-console: fault injected", "fault", f.String(), "port", id, "addr", fmt.Sprintf("%#x", seg.Addr), "len", seg.Len)
	if s.tx.Publish() {
		d.notifyLocked(s.txq)
	}
	return nil
}

// injectedMark in txByHead marks a head InjectFault posted: it has no
// buffer behind it.
const injectedMark = -2

// acceptedInjectedLocked handles the device returning a descriptor that
// InjectFault posted.
func (d *Device) acceptedInjectedLocked(s *slot) {
	d.stats.InjectedAccepted++
	if s.injectedOut > 0 {
		s.injectedOut--
	}
	if s.injectedOut == 0 && s.txWaiters == 0 {
		s.tx.DisableInterrupts()
	}
	// Behind an IOMMU the access itself faults there (the guest kernel logs
	// it); QEMU 7.2 then sends what its bounce buffer held and returns the
	// descriptor as used, instead of failing the device.
	d.log.Error("virtio-console: the device used an injected descriptor instead of refusing it", "port", s.id, "accepted", d.stats.InjectedAccepted)
}
