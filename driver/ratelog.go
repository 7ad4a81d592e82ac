package driver

import "time"

// A device decides how often ports come, go, get named and see their host
// connect: each is an operator's log line, so a device toggling them in a
// loop could flood the log. Such lines go through a token bucket per
// device: a burst of logBurst, then logRate a second; what is held back is
// counted (DeviceStats.LogsSuppressed) and the next line says how many.
const (
	logBurst = 50
	logRate  = 10 // lines per second after the burst
)

type lineLimiter struct {
	tokens     float64
	last       time.Time
	suppressed uint64
}

// infoLocked logs a device-driven line at Info, within the limit.
func (d *Device) infoLocked(msg string, args ...any) {
	if args, ok := d.lines.take(args); ok {
		d.log.Info(msg, args...)
	} else {
		d.stats.LogsSuppressed++
	}
}

// take spends a token for one line: false if the line must be held back
// (counted); otherwise args, with the count of lines held back before it.
func (l *lineLimiter) take(args []any) ([]any, bool) {
	now := time.Now()
	if l.last.IsZero() {
		l.tokens = logBurst
	} else {
		l.tokens = min(logBurst, l.tokens+now.Sub(l.last).Seconds()*logRate)
	}
	l.last = now
	if l.tokens < 1 {
		l.suppressed++
		return args, false
	}
	l.tokens--
	if l.suppressed > 0 {
		args = append(args, "lines_suppressed_before", l.suppressed)
		l.suppressed = 0
	}
	return args, true
}
