package driver

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/vserial/vserial/driver/virtiotest"
)

// Config.Ring and the device's offer decide the layout: auto takes the
// packed ring when offered on the modern interface, split refuses it,
// packed requires it (and so fails on a legacy-only function, whose 32
// feature bits cannot carry bit 34).
func TestRingLayoutNegotiation(t *testing.T) {
	cases := []struct {
		name       string
		fn         virtiotest.Options
		ring       RingLayout
		wantPacked bool
		wantErr    error
	}{
		{"offered/auto", virtiotest.Options{Packed: true}, RingAuto, true, nil},
		{"offered/split", virtiotest.Options{Packed: true}, RingSplit, false, nil},
		{"offered/packed", virtiotest.Options{Packed: true}, RingPacked, true, nil},
		{"transitional/auto", virtiotest.Options{Packed: true, Transitional: true}, RingAuto, true, nil},
		{"not offered/auto", virtiotest.Options{}, RingAuto, false, nil},
		{"not offered/packed", virtiotest.Options{}, RingPacked, false, ErrFeatureMissing},
		{"legacy/packed", virtiotest.Options{LegacyOnly: true, Packed: true}, RingPacked, false, ErrFeatureMissing},
		{"legacy/auto", virtiotest.Options{LegacyOnly: true, Packed: true}, RingAuto, false, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := virtiotest.NewConsole(virtiotest.ConsoleConfig{})
			plugPorts(portSpec{id: 1, name: "p", host: true})(m)
			f, fn := newFake(t, m, c.fn)
			ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
			defer cancel()
			log := &logBuf{}
			d, err := Open(ctx, fn, Config{Ring: c.ring, Logger: slog.New(slog.NewTextHandler(log, nil))})
			if c.wantErr != nil {
				if !errors.Is(err, c.wantErr) {
					t.Fatalf("Open = %v, want %v", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			if got := d.Features()&FeatureRingPacked != 0; got != c.wantPacked {
				t.Fatalf("packed negotiated %v, want %v", got, c.wantPacked)
			}
			want := "ring=split"
			if c.wantPacked {
				want = "ring=packed"
			}
			if !strings.Contains(log.String(), want) {
				t.Errorf("log does not say %s:\n%s", want, log)
			}
			if !c.wantPacked {
				return
			}
			// Spec 2.8.10.1: descriptor ring 16-aligned, event structures
			// 4-aligned, all three programmed.
			for qi := uint16(0); qi < 4; qi++ {
				q, ok := f.Queue(qi)
				if !ok || !q.Enabled {
					t.Fatalf("queue %d not enabled", qi)
				}
				if q.Desc%16 != 0 || q.Driver%4 != 0 || q.Device%4 != 0 || q.Driver == q.Device {
					t.Fatalf("queue %d areas %#x %#x %#x", qi, q.Desc, q.Driver, q.Device)
				}
			}
		})
	}
}

func TestParseRingLayout(t *testing.T) {
	for s, want := range map[string]RingLayout{"auto": RingAuto, "split": RingSplit, "packed": RingPacked} {
		if got, err := ParseRingLayout(s); err != nil || got != want {
			t.Errorf("ParseRingLayout(%q) = %v, %v", s, got, err)
		}
		if got := want.String(); got != s {
			t.Errorf("%d.String() = %q, want %q", want, got, s)
		}
	}
	if _, err := ParseRingLayout("ring"); err == nil {
		t.Error("ParseRingLayout accepted \"ring\"")
	}
}
