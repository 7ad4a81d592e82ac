//go:build faultinject

package main

import (
	"testing"

	"github.com/vserial/vserial/driver"
)

func TestParseFaultRequest(t *testing.T) {
	good := []struct {
		line string
		want faultRequest
	}{
		{"0 1 zero-length", faultRequest{dev: 0, port: 1, fault: driver.FaultZeroLength}},
		{"2 30 address 0x7f000000", faultRequest{dev: 2, port: 30, fault: driver.FaultAddress, addr: 0x7f000000}},
		{"0 1 address unmapped", faultRequest{dev: 0, port: 1, fault: driver.FaultAddress, unmapped: true}},
	}
	for _, c := range good {
		got, err := parseFaultRequest(c.line)
		if err != nil || got != c.want {
			t.Errorf("parseFaultRequest(%q) = %+v, %v; want %+v", c.line, got, err, c.want)
		}
	}
	for _, line := range []string{"", "0 1", "x 1 zero-length", "-1 1 zero-length", "0 -1 zero-length",
		"0 1 bogus", "0 1 address zz", "0 1 address 1 2"} {
		if _, err := parseFaultRequest(line); err == nil {
			t.Errorf("parseFaultRequest(%q) accepted", line)
		}
	}
	if maxResets != faultMaxResets {
		t.Errorf("faultinject build: maxResets %d, want %d", maxResets, faultMaxResets)
	}
}
