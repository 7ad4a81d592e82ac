package main

import (
	"log/slog"
	"strings"
	"testing"
)

// gaspDevice is a fakeDevice that also has the driver's LastGasp.
type gaspDevice struct {
	*fakeDevice
	gasps []string
}

func (d *gaspDevice) LastGasp(b []byte) error {
	d.gasps = append(d.gasps, string(b))
	return nil
}

// A panic anywhere reaches every device opened so far — through LastGasp
// where the device has it — and the log, with the stack.
func TestLastWordsOnPanic(t *testing.T) {
	var logs syncBuffer
	w := &lastWords{log: slog.New(slog.NewTextHandler(&logs, nil))}
	plain := newFakeDevice(t.TempDir())
	gasp := &gaspDevice{fakeDevice: newFakeDevice(t.TempDir())}
	w.add(plain, "0000:00:02.0")
	w.add(gasp, "0000:00:03.0")
	w.panicked("boom\nagain", []byte("goroutine 7 [running]:\nmain.f()"))
	if got := plain.emergency(); got != "vserial-agent: fatal: panic: boom again\n" {
		t.Errorf("device without LastGasp got %q", got)
	}
	if len(gasp.gasps) != 1 || gasp.gasps[0] != "vserial-agent: fatal: panic: boom again\n" || gasp.emergency() != "" {
		t.Errorf("device with LastGasp: last gasps %q, emergency writes %q", gasp.gasps, gasp.emergency())
	}
	if l := logs.String(); !strings.Contains(l, "msg=panic") || !strings.Contains(l, "goroutine 7 [running]") {
		t.Errorf("log misses the panic or its stack:\n%s", l)
	}
}
