package pump

import "time"

// A host→guest stream on one vCPU costs the loop a wake-up and the client
// a switch back for every writev, and a switch costs far more than the
// copy under TCG. Left alone, the loop hands the client whatever QEMU
// filled since the last writev (QEMU fills at most 4 KiB per pass of its
// main loop), the client drains it and blocks, and the pair switch again:
// about 64 KiB per cycle. While a port streams, the loop instead waits
// until rxBatch buffers are filled (the receive interrupt is asked for
// only then: Port.SetRxBatch, EVENT_IDX's used_event moved ahead) and
// hands them over in one writev; QEMU fills the ring meanwhile, in
// parallel with the client's work. The tail of a stream, or a stream that
// slows, is delivered after rxFlushAfter at most. Small writes end the
// mode, so replies to requests are never held back.
const (
	rxBatch      = 64 // buffers of 4 KiB: 256 KiB, half the ring
	rxFlushAfter = time.Millisecond
)

// rxDue says whether the loop should hand c its received bytes now.
func (l *Loop) rxDue(c *client) bool {
	if !c.rxStream {
		return true
	}
	buffered := c.port.RxBuffered()
	if l.rxFlush && buffered == 0 {
		// A flush found nothing: the stream is over (an idle loop must
		// not wake by the clock).
		l.endRxStream(c)
		return true
	}
	return l.rxFlush || buffered >= rxBatch
}

func (l *Loop) endRxStream(c *client) {
	if c.rxStream {
		c.rxStream, c.rxSmall = false, 0
		l.rxStreams--
		c.port.SetRxBatch(0)
	}
}

// rxStreamMode follows the size of the writes to c.
func (l *Loop) rxStreamMode(c *client, n int) {
	switch {
	case n >= streamBytes:
		c.rxSmall = 0
		if !c.rxStream {
			c.rxStream = true
			l.rxStreams++
			c.port.SetRxBatch(rxBatch)
		}
	case n <= trickleBytes && c.rxStream:
		c.rxSmall++
		if c.rxSmall >= smallTransfers {
			l.endRxStream(c)
		}
	}
}

// timeout is epoll_wait's: the storm backoff's end, or the next batch
// flush while a stream is being batched, or none.
func (l *Loop) timeout() int {
	t := l.storm.timeout()
	if l.rxStreams > 0 {
		if f := int(rxFlushAfter / time.Millisecond); t < 0 || f < t {
			t = f
		}
	}
	return t
}
