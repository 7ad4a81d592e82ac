package driver

// Shutting a device down: Close, and stopping the device when it fails or
// is closed, then releasing its queues and memory.

import (
	"fmt"
	"time"

	"github.com/vserial/vserial/dma"
)

// Close tells the host that guest-open ports are closed (PORT_OPEN 0),
// resets the device and frees its memory (once no buffer is in use by a
// reader or writer). It is idempotent.
func (d *Device) Close() error {
	d.closing.Store(true)
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		<-d.loopDone
		return nil
	}
	if flush := d.cfg.CloseFlush; !d.failed && flush >= 0 {
		if flush == 0 {
			flush = defaultCloseFlush
		}
		d.flushTxLocked(flush)
	}
	for _, s := range d.slots {
		if s != nil && s.port != nil && !s.port.removed {
			d.dropInflightLocked(s.port, "device closed")
		}
	}
	if !d.failed && d.multiport {
		for _, s := range d.slots {
			if s != nil && s.port != nil && !s.port.removed && s.port.guestOpen && !s.port.reannounce {
				d.sendControlLocked(s.id, ctrlPortOpen, 0)
			}
		}
		// QEMU handles the control transmitq synchronously on the kick;
		// give a slower device a moment, bounded.
		d.drainControlTxLocked(100 * time.Millisecond)
	}
	d.closed = true
	var err error
	if rerr := d.t.Reset(); rerr != nil && !d.failed {
		err = fmt.Errorf("driver: close: reset: %w", rerr)
	}
	d.stopLocked(ErrClosed)
	d.mu.Unlock()
	d.loopCancel()
	<-d.loopDone
	<-d.fwdDone
	d.mu.Lock()
	d.finishLocked()
	d.mu.Unlock()
	return err
}

// stopLocked marks every port removed, wakes all waiters and closes Done.
func (d *Device) stopLocked(err error) {
	if d.err == nil {
		d.err = err
	}
	if d.reannounceTimer != nil {
		d.reannounceTimer.Stop()
		d.reannounceTimer = nil
	}
	for _, s := range d.slots {
		if s == nil || s.port == nil {
			continue
		}
		p := s.port
		if !p.removed {
			p.removed = true
			p.changedLocked()
			d.emitLocked(p, PortRemoved)
		}
		p.wakeAll()
	}
	select {
	case <-d.done:
	default:
		close(d.done)
	}
	wake(d.evWake)
	d.wakeLoopLocked()
}

// finishLocked frees all device memory once the device is closed and no
// buffer is in use outside the lock.
func (d *Device) finishLocked() {
	if !d.closed || d.held > 0 || d.freed {
		return
	}
	d.releaseLocked()
}

// releaseLocked frees every allocation. The device must be reset.
func (d *Device) releaseLocked() {
	d.freed = true
	free := func(r dma.Region) {
		if r.Len() > 0 {
			if err := d.alloc.Free(r); err != nil {
				d.log.Warn("virtio-console: free dma memory", "err", err)
			}
		}
	}
	for _, s := range d.slots {
		if s == nil {
			continue
		}
		for _, b := range s.rxBufs {
			free(b.mem)
		}
		for _, b := range s.txBufs {
			free(b.mem)
		}
		s.rxBufs, s.txBufs = nil, nil
	}
	for _, r := range d.ctrlRxBufs {
		free(r)
	}
	d.ctrlRxBufs = nil
	free(d.ctrlTxMem)
	d.ctrlTxMem = dma.Region{}
	for i, q := range d.queues {
		if q != nil {
			if err := q.Close(); err != nil {
				d.log.Warn("virtio-console: free queue", "queue", i, "err", err)
			}
		}
	}
	d.queues = nil
}

// broken reports whether the device can no longer be used.
func (d *Device) broken() bool { return d.closed || d.failed }
