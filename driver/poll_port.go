package driver

// The poll face of a port, for the data-plane loop (package pump; the
// device half and the loop's cycle are in poll.go): moving bytes between a
// client descriptor and the port's buffers under the device lock, and
// saying what the port is ready for.

// SendBlock says why SendFrom could not read (more) client bytes now.
type SendBlock uint8

const (
	// SendOK: nothing in the way.
	SendOK SendBlock = iota
	// SendGated: the host side of the port is not connected (or the port
	// waits to be announced again after a reset); bytes stay with the
	// client.
	SendGated
	// SendFull: every transmit buffer is with the device. Transmit
	// interrupts are wanted until one comes back.
	SendFull
)

// RecvTo hands every received buffer waiting for the port (up to
// maxRecvBuffers) to w in one WriteBuffers call and keeps what w did not
// take for the next call: w returns a short count without an error when its
// descriptor is full. Buffers w took are re-posted with one kick. more
// reports whether bytes are still waiting. A removed port or a stopped
// device is an error (ErrPortRemoved, ErrClosed); w's error is returned as
// is, and the bytes it did not take stay (SetGuestOpen(false) discards and
// counts them).
func (p *Port) RecvTo(w BuffersWriter) (n int, more bool, err error) {
	d, s := p.d, p.s
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := p.errLocked(); err != nil {
		return 0, false, err
	}
	limit := maxRecvBuffers
	if p.rxLost {
		// The bytes that arrived before the reset first, then the error.
		limit = min(limit, p.rxKeep, s.fLen)
		if limit == 0 || s.port != p {
			p.rxLost, p.rxKeep = false, 0
			return 0, s.fLen > 0, ErrDeviceReset
		}
	}
	if s.port != p || s.fLen == 0 {
		return 0, false, nil
	}
	bufs := p.recvVec[:0]
	want := 0
	for k := 0; k < s.fLen && k < limit; k++ {
		b := &s.rxBufs[s.fifo[(s.fHead+k)%len(s.fifo)]]
		data := b.mem.Bytes()[b.off:b.n]
		bufs = append(bufs, data)
		want += len(data)
	}
	n, err = w.WriteBuffers(bufs)
	clear(bufs)
	p.recvVec = bufs
	n = max(0, min(n, want))
	p.stats.BytesIn += uint64(n)
	for left := n; left > 0; {
		i := s.fifo[s.fHead]
		b := &s.rxBufs[i]
		k := min(left, b.n-b.off)
		b.off += k
		left -= k
		if b.off == b.n {
			s.fifoPop()
			d.releaseRxLocked(s, i)
			if p.rxKeep > 0 {
				p.rxKeep--
			}
		}
	}
	if n > 0 {
		d.kickRxLocked(s)
	}
	return n, s.fLen > 0 || p.rxLost, err
}

// SendFrom fills every free transmit buffer (up to maxSendBuffers) with one
// ReadBuffers call on r and queues what r read with one kick. r returns 0
// and no error when its descriptor has nothing for now, io.EOF at its end.
// block says why nothing (more) could be read: SendGated while the host
// side is away, SendFull while every buffer is with the device (transmit
// interrupts are then asked for at the next Arm). ErrDeviceReset reports
// bytes of an earlier call lost in a device reset.
func (p *Port) SendFrom(r BuffersReader) (n int, block SendBlock, err error) {
	d, s := p.d, p.s
	d.mu.Lock()
	defer d.mu.Unlock()
	if p.txLost {
		p.txLost = false
		return 0, SendOK, ErrDeviceReset
	}
	if err := p.errLocked(); err != nil {
		return 0, SendOK, err
	}
	if err := d.ensureTxLocked(s); err != nil {
		return 0, SendOK, err
	}
	d.reapTxLocked(s)
	if err := p.errLocked(); err != nil {
		return 0, SendOK, err
	}
	if !p.canSendLocked() {
		return 0, SendGated, nil
	}
	if len(s.txFree) == 0 {
		s.loopTxWait = true
		return 0, SendFull, nil
	}
	s.loopTxWait = false
	take := p.sendIdx[:0]
	bufs := p.sendVec[:0]
	total := 0
	for len(take) < maxSendBuffers && len(s.txFree) > 0 {
		j := s.txFree[len(s.txFree)-1]
		s.txFree = s.txFree[:len(s.txFree)-1]
		s.txBufs[j].owned = true
		b := s.txBufs[j].mem.Bytes()
		take = append(take, j)
		bufs = append(bufs, b)
		total += len(b)
	}
	n, err = r.ReadBuffers(bufs)
	n = max(0, min(n, total))
	clear(bufs)
	p.addFilledLocked(take, n)
	p.sendIdx, p.sendVec = take, bufs
	if n > 0 {
		p.kickTxLocked()
	}
	return n, SendOK, p.lostLocked(err)
}

// TxDrained reports whether the device has taken every byte SendFrom (or
// Send) queued; until it has, transmit interrupts are asked for at the next
// Arm. ErrDeviceReset reports bytes lost in a device reset.
func (p *Port) TxDrained() (bool, error) {
	d, s := p.d, p.s
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.txReady(s) {
		d.reapTxLocked(s)
	}
	if p.txLost {
		p.txLost = false
		return false, ErrDeviceReset
	}
	if err := p.errLocked(); err != nil {
		return false, err
	}
	done := p.txInflight == 0
	s.loopTxWait = !done
	return done, nil
}

// RxPending reports whether the device has returned receive buffers of the
// port that Poll has not taken yet, or bytes wait for RecvTo. It moves no
// event index: a loop spins on it with interrupts off.
func (p *Port) RxPending() bool {
	d, s := p.d, p.s
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.broken() || s.port != p {
		return false
	}
	return s.fLen > 0 || s.rx.Pending()
}

// SetRxBatch makes Arm ask for the port's receive interrupt only once n
// buffers are waiting (those RecvTo has not taken count), within 3/4 of
// the buffers the device holds: a loop that moves a stream in batches of
// about n buffers sets it, and must then wake up by itself after a while
// for the tail of the stream. 0 or 1: at the next buffer.
func (p *Port) SetRxBatch(n int) {
	p.d.mu.Lock()
	defer p.d.mu.Unlock()
	p.s.rxBatch = max(0, min(n, 1<<15))
}

// RxBuffered returns how many received buffers wait for RecvTo.
func (p *Port) RxBuffered() int {
	p.d.mu.Lock()
	defer p.d.mu.Unlock()
	if p.s.port != p {
		return 0
	}
	return p.s.fLen
}

// rxArmAfter is how many more used receive buffers the next interrupt
// waits for (SetRxBatch).
func (s *slot) rxArmAfter() uint16 {
	want := s.rxBatch - s.fLen
	if want <= 1 {
		return 1
	}
	return uint16(max(1, min(want, s.rx.InFlight()*3/4)))
}

// CanSend reports whether bytes queued now would reach the host (the host
// side is connected, or the port is a console).
func (p *Port) CanSend() bool {
	p.d.mu.Lock()
	defer p.d.mu.Unlock()
	return p.errLocked() == nil && p.canSendLocked()
}

// Ready says what a client that waits on the port outside the loop (an
// in-process endpoint, which calls RecvTo and SendFrom from its own
// goroutine) can do now: recv, RecvTo has bytes or an error for it; send,
// SendFrom would take bytes (the host side is connected and a transmit
// buffer is free) or report an error; drained, the device holds nothing the
// port queued. A loop calls it after Poll, which reclaims transmit buffers,
// to wake such a client only when waking it helps.
func (p *Port) Ready() (recv, send, drained bool) {
	d, s := p.d, p.s
	d.mu.Lock()
	defer d.mu.Unlock()
	if p.errLocked() != nil || s.port != p {
		return true, true, true
	}
	recv = p.rxLost || s.fLen > 0
	// Transmit buffers come with the first send: none yet is room.
	send = p.txLost || (p.canSendLocked() && (len(s.txFree) > 0 || s.txBufs == nil))
	drained = p.txLost || p.txInflight == 0
	return recv, send, drained
}

// QuietRx turns the port's receive interrupt off while a client spins on
// the ring; ArmRx (or the loop's next Arm) turns it on again.
func (p *Port) QuietRx() {
	d, s := p.d, p.s
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.broken() || s.port != p || !s.hotLocked() {
		return
	}
	s.rx.DisableInterrupts()
	s.rxOff = true
}

// TakeRx moves the buffers the device returned on the port's receive
// queue to the bytes waiting for RecvTo, and reports whether bytes (or an
// error) wait for RecvTo.
func (p *Port) TakeRx() bool {
	d, s := p.d, p.s
	d.mu.Lock()
	defer d.mu.Unlock()
	if p.errLocked() != nil || s.port != p || d.broken() {
		return true
	}
	if s.rx.Pending() {
		if err := d.serviceRxLocked(s); err != nil {
			d.faultLocked(err)
			return true
		}
	}
	return p.rxLost || s.fLen > 0
}

// ArmRx turns the receive interrupt QuietRx turned off on again. Buffers
// the device returned before that raise no interrupt: ArmRx takes them,
// and reports whether bytes (or an error) wait for RecvTo, in which case
// the caller reads instead of waiting.
func (p *Port) ArmRx() bool {
	d, s := p.d, p.s
	d.mu.Lock()
	defer d.mu.Unlock()
	if p.errLocked() != nil || s.port != p || d.broken() {
		return true
	}
	if s.rxOff {
		s.rxOff = false
		if s.rx.EnableInterruptsAfter(s.rxArmAfter()) {
			if err := d.serviceRxLocked(s); err != nil {
				d.faultLocked(err)
				return true
			}
		}
	}
	return p.rxLost || s.fLen > 0
}
