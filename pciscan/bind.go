package pciscan

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// writeFunc writes one sysfs attribute in one write(2). It is a variable of
// the binder so tests can play the kernel's part: a test writer records the
// write and then moves the driver symlink as the kernel would.
type writeFunc func(path, value string) error

// sysfsWrite opens an existing attribute (never creates one) and writes value.
func sysfsWrite(path, value string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	_, werr := f.Write([]byte(value))
	cerr := f.Close()
	if werr != nil {
		return werr
	}
	return cerr
}

type binder struct {
	sysfs string
	write writeFunc
}

// Take moves the function at addr to driver and returns the driver that held
// it before ("" if none), which Restore takes to give it back. Without
// force it refuses a function that another driver holds (ErrHeld); with
// force it takes it from that driver. Taking it for the driver that already
// holds it succeeds and returns that driver.
func Take(sysfs, addr, driver string, force bool) (previous string, err error) {
	return binder{sysfs, sysfsWrite}.take(addr, driver, force)
}

// Restore clears driver_override, unbinds the function from its current
// driver and, if previous is not "", asks the kernel to probe it again and
// checks that previous took it.
func Restore(sysfs, addr, previous string) error {
	return binder{sysfs, sysfsWrite}.restore(addr, previous)
}

func (b binder) dev(addr string) string              { return filepath.Join(devicesDir(b.sysfs), addr) }
func (b binder) drv(name string) string              { return filepath.Join(b.sysfs, "bus", "pci", "drivers", name) }
func (b binder) probeFile() string                   { return filepath.Join(b.sysfs, "bus", "pci", "drivers_probe") }
func (b binder) current(addr string) (string, error) { return linkBase(b.dev(addr), "driver") }

func (b binder) take(addr, driver string, force bool) (previous string, err error) {
	a, err := ParseAddr(addr)
	if err != nil {
		return "", err
	}
	fail := func(err error) (string, error) {
		return "", fmt.Errorf("pciscan: bind %s to %s: %w", a, driver, err)
	}
	if !validName(driver) {
		return fail(fmt.Errorf("bad driver name %q", driver))
	}
	if _, err := os.Stat(b.dev(a)); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fail(ErrNoDevice)
		}
		return fail(err)
	}
	cur, err := b.current(a)
	if err != nil {
		return fail(err)
	}
	if cur == driver {
		return cur, nil
	}
	if cur != "" && !force {
		return "", fmt.Errorf("pciscan: bind %s: %w", a, &HeldError{Driver: cur})
	}
	if !DriverRegistered(b.sysfs, driver) {
		return fail(fmt.Errorf("%w (is module %s loaded?)", ErrNoDriver, driver))
	}
	if err := b.moveTo(a, cur, driver); err != nil {
		// Best effort: put the function back where it was.
		if rerr := b.restore(a, cur); rerr != nil {
			err = fmt.Errorf("%w (restoring %s also failed: %v)", err, cur, rerr)
		}
		return fail(err)
	}
	return cur, nil
}

// moveTo performs the sysfs dance: override, unbind, probe, verify.
func (b binder) moveTo(addr, cur, driver string) error {
	dev := b.dev(addr)
	if err := b.write(filepath.Join(dev, "driver_override"), driver); err != nil {
		return fmt.Errorf("set driver_override: %w", err)
	}
	if cur != "" {
		if err := b.unbind(addr, cur); err != nil {
			return err
		}
	}
	// drivers_probe honours driver_override; if the kernel still did not bind
	// (an older kernel, or a driver that ignored the probe), name the driver
	// explicitly through its bind file.
	perr := b.write(b.probeFile(), addr)
	if got, _ := b.current(addr); got == driver {
		return nil
	}
	berr := b.write(filepath.Join(b.drv(driver), "bind"), addr)
	got, err := b.current(addr)
	if err != nil {
		return err
	}
	if got != driver {
		if got == "" {
			got = "no driver"
		}
		return fmt.Errorf("%s did not take the function (now %s; probe: %v; bind: %v)", driver, got, perr, berr)
	}
	return nil
}

func (b binder) unbind(addr, cur string) error {
	if err := b.write(filepath.Join(b.drv(cur), "unbind"), addr); err != nil {
		return fmt.Errorf("unbind from %s: %w", cur, err)
	}
	if got, err := b.current(addr); err != nil || got != "" {
		return fmt.Errorf("unbind from %s: function still bound to %q (%v)", cur, got, err)
	}
	return nil
}

func (b binder) restore(addr, previous string) error {
	a, err := ParseAddr(addr)
	if err != nil {
		return err
	}
	fail := func(err error) error { return fmt.Errorf("pciscan: restore %s to %q: %w", a, previous, err) }
	if previous != "" && !validName(previous) {
		return fail(fmt.Errorf("bad driver name %q", previous))
	}
	// An empty write clears the override (a lone newline is what echo sends).
	if err := b.write(filepath.Join(b.dev(a), "driver_override"), "\n"); err != nil {
		return fail(fmt.Errorf("clear driver_override: %w", err))
	}
	cur, err := b.current(a)
	if err != nil {
		return fail(err)
	}
	if cur == previous {
		return nil
	}
	if cur != "" {
		if err := b.unbind(a, cur); err != nil {
			return fail(err)
		}
	}
	if previous == "" {
		return nil
	}
	perr := b.write(b.probeFile(), a)
	if got, _ := b.current(a); got == previous {
		return nil
	}
	berr := b.write(filepath.Join(b.drv(previous), "bind"), a)
	got, err := b.current(a)
	if err != nil {
		return fail(err)
	}
	if got != previous {
		return fail(fmt.Errorf("%s did not take the function back (probe: %v; bind: %v)", previous, perr, berr))
	}
	return nil
}
