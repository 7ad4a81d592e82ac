package driver

// The driver's own event loop (without Config.ExternalLoop): one goroutine
// waits for the function's interrupt, reads the ISR (INTx), re-arms the
// interrupt and services the queues: all of them, or with MSI-X and a
// VectorIRQ only those on the vectors that fired. Idle, it sits in IRQ.Wait
// (the Go poller): no polling, no timers.
//
// Two ways to drive a device. By default one goroutine (this file) waits in
// IRQ.Wait, reads the ISR for INTx, unmasks, and drains every queue; idle,
// it costs nothing. With Config.ExternalLoop the driver starts no goroutine
// and offers its poll face instead (poll.go): a loop that owns the
// interrupt descriptors (IRQFDs, from a PollIRQ) calls HandleIRQ, Poll,
// Disarm and Arm (NAPI: data interrupts off while it works, re-armed and
// re-checked before it sleeps; INTx masked until then), and moves bytes
// with RecvTo and SendFrom, which do the caller's non-blocking vectored
// I/O under the driver's lock; package pump is that loop. Port events are
// coalesced (one PortChanged per port waits at a time; PortAdded and
// PortRemoved are never dropped), device-driven log lines are rate-limited
// (ratelog.go), and control messages are copied out of device memory
// before they are parsed.
//
// With MSI-X, vector 0 carries configuration changes and both control
// queues, and the data queues of port id p sit on vector 1 + p mod (n-1)
// (setupVectors, queueVector): with QEMU's default of two vectors all data
// shares vector 1, with more each port up to n-1 has its own; one vector
// carries everything. When the IRQ is a VectorIRQ (uio's VFIO MSI-X is) the
// loop learns which vectors fired and services only their ports, reads the
// device status only when vector 0 fired, and runs the control queues only
// then; an IRQ that cannot tell services everything, as INTx does.

import (
	"context"
	"fmt"

	"github.com/vserial/vserial/internal/guard"
)

// isrConfig is the ISR's configuration-change bit (spec 4.1.4.5). The
// queue bit needs no test: an INTx wake-up drains every queue anyway.
const isrConfig = 2

// allVectors is the vector set that services everything: INTx, an IRQ
// that cannot say which vector fired, or work left from the last round.
const allVectors = ^uint64(0)

func (d *Device) loop(ctx context.Context) {
	defer guard.Recover()
	defer close(d.loopDone)
	irq := d.fn.IRQ()
	vi, byVector := irq.(VectorIRQ)
	byVector = byVector && irq.MSIXVectors() > 0
	more := false
	for {
		d.mu.Lock()
		more = more || d.pendingWork
		d.pendingWork = false
		d.mu.Unlock()
		fired := allVectors
		if !more {
			var err error
			if byVector {
				fired, err = vi.WaitVectors(ctx)
			} else {
				err = irq.Wait(ctx)
			}
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				d.mu.Lock()
				d.fatalLocked(fmt.Errorf("driver: wait for interrupt: %w", err))
				d.mu.Unlock()
				return
			}
		}
		d.mu.Lock()
		if d.broken() {
			d.mu.Unlock()
			return
		}
		if !more {
			d.stats.Interrupts++
			// With MSI-X, configuration changes come on vecConfig.
			config := fired&vectorBit(d.vecConfig) != 0
			if irq.MSIXVectors() == 0 {
				isr, err := d.t.ISR()
				if err != nil {
					d.log.Warn("virtio-console: read ISR", "err", err)
				}
				config = isr&isrConfig != 0
			}
			if err := irq.Unmask(); err != nil {
				d.log.Warn("virtio-console: unmask interrupt", "err", err)
			}
			if config {
				d.checkStatusLocked()
				if d.sizeF && !d.multiport && !d.broken() {
					// Linux: a configuration change of a device without
					// MULTIPORT is a resize of port 0.
					d.configSizeLocked()
				}
			}
		}
		more = d.serviceLocked(fired)
		d.mu.Unlock()
	}
}

// checkStatusLocked handles a configuration interrupt: in multiport mode
// config changes carry no information (Linux ignores them), but
// DEVICE_NEEDS_RESET (spec 2.1.2) does.
func (d *Device) checkStatusLocked() {
	st, err := d.t.Status()
	if err != nil {
		d.log.Warn("virtio-console: read status", "err", err)
		return
	}
	if st&StatusDeviceNeedsReset != 0 {
		d.faultLocked(fmt.Errorf("%w: device set DEVICE_NEEDS_RESET (status %#x)", ErrDeviceProtocolConsole, st))
	} else if st&StatusDriverOK == 0 {
		d.faultLocked(fmt.Errorf("%w: device dropped DRIVER_OK (status %#x)", ErrDeviceProtocolConsole, st))
	}
}

// serviceLocked drains the queues on the vectors in fired (allVectors:
// every queue). It reports true if control work was left for another
// round.
func (d *Device) serviceLocked(fired uint64) (more bool) {
	if d.broken() {
		return false
	}
	if err := d.serviceDataLocked(fired); err != nil {
		d.faultLocked(err)
		return false
	}
	if d.multiport && fired&vectorBit(d.vecConfig) != 0 {
		more, err := d.serviceControlPassesLocked(maxControlPasses)
		if err != nil {
			d.faultLocked(err)
			return false
		}
		return more
	}
	return false
}

func (d *Device) serviceDataLocked(fired uint64) error {
	for _, s := range d.slots {
		if s == nil || fired&vectorBit(d.queueVector(s.rxq)) == 0 {
			continue
		}
		if err := d.serviceRxLocked(s); err != nil {
			return err
		}
		if err := d.reapTxErrLocked(s); err != nil {
			return err
		}
	}
	return nil
}
