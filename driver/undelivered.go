package driver

// Guest→host bytes a client handed over can still be lost after the
// driver took them: a device reset, a port removal or Close drops the
// transmit buffers the device had not used yet. Such bytes are never lost
// silently: they are counted (PortStats.Undelivered,
// DeviceStats.Undelivered) and logged. Close first gives the device a
// bounded time to take them (Config.CloseFlush).

import "time"

// defaultCloseFlush is Close's wait for in-flight transmit buffers when
// Config.CloseFlush is 0: long enough for a host that reads, short against
// a supervisor's stop timeout (systemd's default is 90 s).
const defaultCloseFlush = 2 * time.Second

// inflightTxLocked sums the bytes of the port's transmit buffers the
// device holds and has not returned.
func (p *Port) inflightTxLocked() (bytes uint64, bufs int) {
	s := p.s
	if s.port != p {
		return 0, 0
	}
	for _, i := range s.txByHead {
		if i < 0 {
			continue // free head, or an injected fault's descriptor
		}
		if b := &s.txBufs[i]; b.gen == s.gen {
			bytes += uint64(b.n)
			bufs++
		}
	}
	return bytes, bufs
}

// dropInflightLocked counts and logs the port's in-flight transmit bytes,
// which the caller is about to forget (why says what happened).
func (d *Device) dropInflightLocked(p *Port, why string) {
	n, bufs := p.inflightTxLocked()
	if n == 0 {
		return
	}
	p.stats.Undelivered += n
	d.stats.Undelivered += n
	d.warnLocked("virtio-console: guest→host bytes not delivered", "port", p.id, "name", p.name,
		"why", why, "undelivered", n, "buffers", bufs, "delivered", p.stats.BytesOut)
}

// flushTxLocked waits, at most timeout, until the device has taken every
// transmit buffer of every live port. It polls the used rings (Close runs
// when the event loop may be gone) and gives up the lock while it sleeps.
func (d *Device) flushTxLocked(timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for {
		pending := false
		for _, s := range d.slots {
			if s == nil || s.port == nil || s.port.removed || s.port.txInflight == 0 {
				continue
			}
			d.reapTxLocked(s)
			pending = pending || s.port.txInflight > 0
		}
		if !pending || d.failed || d.broken() || !time.Now().Before(deadline) {
			return
		}
		d.mu.Unlock()
		time.Sleep(time.Millisecond)
		d.mu.Lock()
	}
}
