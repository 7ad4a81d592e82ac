package uio

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/vserial/vserial/internal/rawio"
)

// PCI configuration space offsets and bits used here (PCI Local Bus 3.0 §6.2).
const (
	cfgCommand     = 0x04
	cmdIOSpace     = 0x0001
	cmdMemSpace    = 0x0002
	cmdBusMaster   = 0x0004
	cmdIntxDisable = 0x0400
)

// Config is PCI configuration space through the sysfs config file. It
// implements driver.ConfigSpace: each call is one pread or pwrite of exactly
// len(p) bytes, which the kernel performs as one config access of that width
// when len(p) is 1, 2 or 4 and off is aligned to it.
type Config struct {
	f ConfigFile

	// mu guards the cached command register used by IRQ.Unmask.
	mu      sync.Mutex
	cmd     uint16
	haveCmd bool
}

// ConfigFile is the sysfs config file; tests record the accesses.
type ConfigFile interface {
	io.ReaderAt
	io.WriterAt
	io.Closer
}

func NewConfig(f ConfigFile) *Config { return &Config{f: f} }

// rawConfigFile reads and writes the sysfs config file with raw system
// calls (internal/rawio): the INTx unmask is on the data plane's path,
// where a call Go's scheduler sees lets its sysmon take the loop's P.
type rawConfigFile struct {
	f  *os.File
	fd int
}

func newRawConfigFile(f *os.File) rawConfigFile { return rawConfigFile{f: f, fd: int(f.Fd())} }

func (r rawConfigFile) ReadAt(p []byte, off int64) (int, error) {
	n, e := rawio.Pread(r.fd, p, off)
	return n, rawio.Err(e)
}

func (r rawConfigFile) WriteAt(p []byte, off int64) (int, error) {
	n, e := rawio.Pwrite(r.fd, p, off)
	return n, rawio.Err(e)
}

func (r rawConfigFile) Close() error { return r.f.Close() }

// ReadAt reads len(p) bytes at off.
func (c *Config) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.f.ReadAt(p, off)
	if err != nil {
		return n, fmt.Errorf("uio: config read %d bytes at %#x: %w", len(p), off, err)
	}
	return n, nil
}

// WriteAt writes len(p) bytes at off. A write that touches the command
// register also updates the copy Unmask works from.
func (c *Config) WriteAt(p []byte, off int64) (int, error) {
	n, err := c.f.WriteAt(p, off)
	if err != nil {
		return n, fmt.Errorf("uio: config write %d bytes at %#x: %w", len(p), off, err)
	}
	c.mu.Lock()
	if c.haveCmd {
		for i := range p[:n] {
			switch off + int64(i) {
			case cfgCommand:
				c.cmd = c.cmd&0xff00 | uint16(p[i])
			case cfgCommand + 1:
				c.cmd = c.cmd&0x00ff | uint16(p[i])<<8
			}
		}
	}
	c.mu.Unlock()
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
func (c *Config) Enable() error {
	cmd, err := c.read16(cfgCommand)
	if err != nil {
		return err
	}
	cmd = (cmd | cmdIOSpace | cmdMemSpace | cmdBusMaster) &^ cmdIntxDisable
	if err := c.write16(cfgCommand, cmd); err != nil {
		return err
	}
	c.mu.Lock()
	c.cmd, c.haveCmd = cmd, true
	c.mu.Unlock()
	return nil
}

// unmaskIntx clears Interrupt Disable (bit 10) with one 16-bit write of the
// whole command register, from a cached copy. The kernel's interrupt
// handler (uio_pci_generic, pci_check_and_mask_intx) sets that bit on every
// interrupt and nothing else changes the register behind our back while we
// own the device (our own writes go through WriteAt, which keeps the copy),
// so the copy is exact and saves a config read per interrupt.
//
// The write must cover byte 4, not just byte 5 where the bit lives (as the
// uio howto does it): QEMU up to at least 7.2 re-evaluates the INTx line on
// a command write only if the write covers byte 4 (pci_default_write_config
// tests range_covers_byte(addr, len, PCI_COMMAND)). A byte-5 write clears
// the bit in config space but leaves an interrupt the device raised while
// masked undelivered; the device never raises it again while its line is
// still up (the ISR is unread), so the driver waits forever with the ISR
// set. A 16-bit write at offset 4 is what Linux itself does and touches
// neither the status register nor anything else.
func (c *Config) unmaskIntx() error {
	c.mu.Lock()
	cmd, have := c.cmd, c.haveCmd
	c.mu.Unlock()
	if !have {
		v, err := c.read16(cfgCommand)
		if err != nil {
			return err
		}
		c.mu.Lock()
		if !c.haveCmd {
			c.cmd, c.haveCmd = v, true
		}
		cmd = c.cmd
		c.mu.Unlock()
	}
	return c.write16(cfgCommand, cmd&^cmdIntxDisable)
}

func (c *Config) close() error { return c.f.Close() }

// DisableBusMaster clears Bus Master so the device can no longer reach
// memory (QEMU also drops DRIVER_OK then).
func (c *Config) DisableBusMaster() error {
	cmd, err := c.read16(cfgCommand)
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.cmd, c.haveCmd = cmd, true // WriteAt below records the new value
	c.mu.Unlock()
	return c.write16(cfgCommand, cmd&^cmdBusMaster)
}
