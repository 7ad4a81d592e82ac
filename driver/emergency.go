package driver

// Emergency writes (VIRTIO_CONSOLE_F_EMERG_WRITE, spec 5.3.5): bytes that
// reach the host through the configuration space when the queues cannot,
// and the last gasp written before the agent dies.

import (
	"errors"
	"fmt"
	"time"
)

// ErrNoEmergencyWrite is returned by EmergencyWrite when the device did not
// offer VIRTIO_CONSOLE_F_EMERG_WRITE (QEMU: emergency-write=off, or
// machine types up to 2.7).
var ErrNoEmergencyWrite = errors.New("driver: emergency write not negotiated")

// emergWrOffset is the offset of emerg_wr in the configuration (spec 5.3.4).
const emergWrOffset = 8

// EmergencyWrite writes b through the emerg_wr configuration field
// (VIRTIO_CONSOLE_F_EMERG_WRITE, spec 5.3.5), one 32-bit write per byte.
// It needs no queue, buffer or interrupt, so it works while the ports are
// not up yet and after the device failed (not after Close). QEMU puts each
// byte on the first host-connected console port (a virtconsole, usually
// port 0) and drops it when there is none. A zero byte cannot be expressed
// (the device takes 0 as "nothing written") and is skipped. It returns
// ErrNoEmergencyWrite when the feature was not negotiated.
func (d *Device) EmergencyWrite(b []byte) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.emergencyWriteLocked(b)
}

func (d *Device) emergencyWriteLocked(b []byte) error {
	switch {
	case d.closed:
		return ErrClosed
	case !d.emergF:
		return ErrNoEmergencyWrite
	}
	var w [4]byte
	for _, c := range b {
		if c == 0 {
			continue
		}
		d.order.PutUint32(w[:], uint32(c))
		if err := d.t.WriteConfig(emergWrOffset, w[:]); err != nil {
			return fmt.Errorf("driver: emergency write: %w", err)
		}
	}
	return nil
}

// lastGaspWait bounds LastGasp's wait for the driver's lock.
const lastGaspWait = 100 * time.Millisecond

// LastGasp is EmergencyWrite for a process that is about to die of a
// panic: the goroutine that panicked may hold the driver's lock forever,
// so LastGasp waits for it at most lastGaspWait and then writes without
// it (one register write per byte, which the device handles on its own).
// It refuses once Close has started releasing the device's memory.
func (d *Device) LastGasp(b []byte) error {
	deadline := time.Now().Add(lastGaspWait)
	for {
		if d.mu.TryLock() {
			defer d.mu.Unlock()
			return d.emergencyWriteLocked(b)
		}
		if !time.Now().Before(deadline) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if d.closing.Load() || !d.emergF {
		return ErrClosed
	}
	return d.emergencyWriteLocked(b)
}
