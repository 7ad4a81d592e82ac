package driver

import (
	"context"
	"log/slog"
)

// A device decides how often ports come, go, get named and see their host
// connect: each is an operator's log line, so a device toggling them in a
// loop could flood the log. Such lines go through a token bucket per
// device (internal/ratelimit): a burst of logBurst, then logRate a second;
// what is held back is counted (DeviceStats.LogsSuppressed) and the next
// line says how many.
const (
	logBurst = 50
	logRate  = 10 // lines per second after the burst
)

// infoLocked logs a device-driven line at Info, within the limit.
func (d *Device) infoLocked(msg string, args ...any) { d.logLimitedLocked(slog.LevelInfo, msg, args) }

// warnLocked is infoLocked at Warn level, within the same limit.
func (d *Device) warnLocked(msg string, args ...any) { d.logLimitedLocked(slog.LevelWarn, msg, args) }

// logLimitedLocked logs one device-driven line if the device's gate lets it
// through, saying how many were held back before it; otherwise it counts
// it in DeviceStats.LogsSuppressed.
func (d *Device) logLimitedLocked(level slog.Level, msg string, args []any) {
	ok, held := d.lines.Allow()
	if !ok {
		d.stats.LogsSuppressed++
		return
	}
	if held > 0 {
		args = append(args, "lines_suppressed_before", held)
	}
	d.log.Log(context.Background(), level, msg, args...)
}
