package pciscan

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"
)

func msg(parts ...string) []byte { return []byte(strings.Join(parts, "\x00") + "\x00") }

func TestParseUevent(t *testing.T) {
	for _, c := range []struct {
		in   []byte
		want Uevent
		ok   bool
	}{
		{msg("add@/devices/pci0000:00/0000:00:1c.0/0000:01:00.0", "ACTION=add", "DEVPATH=/devices/pci0000:00/0000:00:1c.0/0000:01:00.0",
			"SUBSYSTEM=pci", "PCI_ID=1AF4:1043", "PCI_SLOT_NAME=0000:01:00.0", "SEQNUM=1234"),
			Uevent{Action: "add", Addr: "0000:01:00.0", VendorDevice: "1AF4:1043"}, true},
		{msg("unbind@/devices/pci0000:00/0000:00:02.0", "ACTION=unbind", "SUBSYSTEM=pci", "DRIVER=virtio-pci", "PCI_SLOT_NAME=0000:00:02.0"),
			Uevent{Action: "unbind", Addr: "0000:00:02.0", Driver: "virtio-pci"}, true},
		{msg("remove@/devices/pci0000:00/0000:00:02.0", "ACTION=remove", "SUBSYSTEM=pci", "PCI_SLOT_NAME=00:02.0"),
			Uevent{Action: "remove", Addr: "0000:00:02.0"}, true},
		// Not PCI, no address, a bad address, no header, garbage.
		{msg("add@/devices/virtual/net/lo", "ACTION=add", "SUBSYSTEM=net"), Uevent{}, false},
		{msg("add@/devices/pci0000:00", "ACTION=add", "SUBSYSTEM=pci"), Uevent{}, false},
		{msg("add@/x", "ACTION=add", "SUBSYSTEM=pci", "PCI_SLOT_NAME=../../etc"), Uevent{}, false},
		{msg("ACTION=add", "SUBSYSTEM=pci", "PCI_SLOT_NAME=0000:00:02.0"), Uevent{}, false},
		{msg("add@/x", "SUBSYSTEM=pci", "PCI_SLOT_NAME=0000:00:02.0"), Uevent{}, false},
		{[]byte("libudev\x00\xfe\xed\xca\xfe"), Uevent{}, false},
		{nil, Uevent{}, false},
	} {
		got, ok := ParseUevent(c.in)
		if ok != c.ok || got != c.want {
			t.Errorf("ParseUevent(%q) = %+v, %v; want %+v, %v", c.in, got, ok, c.want, c.ok)
		}
	}
}

func FuzzParseUevent(f *testing.F) {
	f.Add(msg("add@/devices/pci0000:00/0000:00:02.0", "ACTION=add", "SUBSYSTEM=pci", "PCI_SLOT_NAME=0000:00:02.0"))
	f.Add([]byte("remove@\x00SUBSYSTEM=pci\x00ACTION=remove\x00PCI_SLOT_NAME=0000:00:02.0"))
	f.Fuzz(func(t *testing.T, b []byte) {
		ev, ok := ParseUevent(b)
		if !ok {
			return
		}
		if a, err := ParseAddr(ev.Addr); err != nil || a != ev.Addr || ev.Action == "" {
			t.Fatalf("accepted %+v from %q", ev, b)
		}
	})
}

// The socket opens and Close wakes a blocked Next. (The kernel's own
// events are exercised in the guest, where PCI functions come and go.)
func TestWatcherCloseWakesNext(t *testing.T) {
	w, err := Watch()
	if err != nil {
		t.Skipf("no uevent socket here: %v", err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := w.Next()
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	w.Close()
	select {
	case err := <-done:
		if !errors.Is(err, os.ErrClosed) {
			t.Errorf("Next after Close: %v, want os.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not wake Next")
	}
}
