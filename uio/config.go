package uio

import (
	"encoding/binary"
	"fmt"
	"io"
	"sync"
)

// PCI configuration space offsets and bits used here (PCI Local Bus 3.0 §6.2).
const (
	cfgCommand         = 0x04
	cfgCommandHigh     = 0x05 // high byte of the command register
	cmdIOSpace         = 0x0001
	cmdMemSpace        = 0x0002
	cmdBusMaster       = 0x0004
	cmdIntxDisable     = 0x0400
	cmdHighIntxDisable = 0x04 // cmdIntxDisable within cfgCommandHigh
)

// Config is PCI configuration space through the sysfs config file. It
// implements driver.ConfigSpace: each call is one pread or pwrite of exactly
// len(p) bytes, which the kernel performs as one config access of that width
// when len(p) is 1, 2 or 4 and off is aligned to it.
type Config struct {
	f configFile

	// mu guards the cached high command byte used by IRQ.Unmask.
	mu       sync.Mutex
	cmdHigh  uint8
	haveHigh bool
}

// configFile is the sysfs config file; tests record the accesses.
type configFile interface {
	io.ReaderAt
	io.WriterAt
	io.Closer
}

func newConfig(f configFile) *Config { return &Config{f: f} }

// ReadAt reads len(p) bytes at off.
func (c *Config) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.f.ReadAt(p, off)
	if err != nil {
		return n, fmt.Errorf("uio: config read %d bytes at %#x: %w", len(p), off, err)
	}
	return n, nil
}

// WriteAt writes len(p) bytes at off.
func (c *Config) WriteAt(p []byte, off int64) (int, error) {
	n, err := c.f.WriteAt(p, off)
	if err != nil {
		return n, fmt.Errorf("uio: config write %d bytes at %#x: %w", len(p), off, err)
	}
	return n, nil
}

func (c *Config) read16(off int64) (uint16, error) {
	var b [2]byte
	if _, err := c.ReadAt(b[:], off); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint16(b[:]), nil
}

func (c *Config) write16(off int64, v uint16) error {
	var b [2]byte
	binary.LittleEndian.PutUint16(b[:], v)
	_, err := c.WriteAt(b[:], off)
	return err
}

// enable sets I/O, memory decoding and Bus Master and clears Interrupt
// Disable, with one 16-bit read and one 16-bit write of the command
// register only: a wider write would hit the status register, whose error
// bits are write-one-to-clear. It primes the cache Unmask works from.
func (c *Config) enable() error {
	cmd, err := c.read16(cfgCommand)
	if err != nil {
		return err
	}
	cmd = (cmd | cmdIOSpace | cmdMemSpace | cmdBusMaster) &^ cmdIntxDisable
	if err := c.write16(cfgCommand, cmd); err != nil {
		return err
	}
	c.mu.Lock()
	c.cmdHigh, c.haveHigh = uint8(cmd>>8), true
	c.mu.Unlock()
	return nil
}

// unmaskIntx clears Interrupt Disable by writing the cached high byte of the
// command register with bit 2 clear. The kernel's interrupt handler
// (uio_pci_generic, pci_check_and_mask_intx) sets that bit on every
// interrupt, and the other bits of the byte never change while we own the
// device, so a cached value is exact and saves a config read per interrupt
// (the uio howto does the same). Writing only byte 5 leaves Bus Master and
// decoding, in byte 4, untouched.
func (c *Config) unmaskIntx() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.haveHigh {
		var b [1]byte
		if _, err := c.ReadAt(b[:], cfgCommandHigh); err != nil {
			return err
		}
		c.cmdHigh, c.haveHigh = b[0], true
	}
	c.cmdHigh &^= cmdHighIntxDisable
	_, err := c.WriteAt([]byte{c.cmdHigh}, cfgCommandHigh)
	return err
}

func (c *Config) close() error { return c.f.Close() }

// disableBusMaster clears Bus Master so the device can no longer reach
// memory (QEMU also drops DRIVER_OK then).
func (c *Config) disableBusMaster() error {
	cmd, err := c.read16(cfgCommand)
	if err != nil {
		return err
	}
	return c.write16(cfgCommand, cmd&^cmdBusMaster)
}
