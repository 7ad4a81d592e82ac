// Package pciscantest lays out fake PCI functions in a sysfs tree for
// tests of code that scans and binds functions.
package pciscantest

import (
	"os"
	"path/filepath"
	"testing"
)

// Function creates ROOT/bus/pci/devices/ADDR with the identity files the
// kernel gives a function (vendor, device, subsystem ids, revision, class)
// and, if driver is not "", a driver link to ROOT/bus/pci/drivers/DRIVER.
func Function(t testing.TB, root, addr, vendor, device, subdev, driver string) {
	t.Helper()
	dir := filepath.Join(root, "bus", "pci", "devices", addr)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, v := range map[string]string{
		"vendor": vendor, "device": device, "subsystem_vendor": "0x1af4", "subsystem_device": subdev,
		"revision": "0x01", "class": "0x078000",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if driver != "" {
		if err := os.Symlink("../../../bus/pci/drivers/"+driver, filepath.Join(dir, "driver")); err != nil {
			t.Fatal(err)
		}
	}
}
