// Package ringtest plays the device side of a split virtqueue over the same
// memory as a ring.Queue, with the same atomics, for tests. It can be told to
// misbehave in each way a hostile or broken device could.
package ringtest

// API CONTRACT (the ring helper implements the bodies; the fake PCI function
// and the console model in driver/virtiotest are written against these
// signatures).

import "github.com/vserial/vserial/ring"

// Memory resolves device addresses; *dmatest.Heap implements it.
type Memory interface {
	Resolve(addr uint64, n int) ([]byte, error)
}

// Config describes the queue the device serves; it mirrors ring.Config.
type Config struct {
	Size     uint16
	Layout   ring.Layout
	EventIdx bool // negotiated: honour used_event, publish avail_event
	Indirect bool // negotiated: accept indirect descriptors
	// Desc, Driver and Device are the three area addresses (for the legacy
	// layout only Desc is used, as QUEUE_PFN << 12).
	Desc, Driver, Device uint64
}

// Buf is one resolved segment of a chain.
type Buf struct {
	Addr  uint64
	Len   uint32
	Write bool
	Data  []byte // the segment's bytes in memory (len == Len)
}

// Chain is an available chain popped by the device.
type Chain struct {
	Head uint16
	Bufs []Buf
}

// Misbehaviour switches; each makes the device break one rule.
type Misbehaviour struct {
	BadID          bool   // next Push writes an id >= queue size
	Duplicate      bool   // next Push completes the previous head a second time
	LongLen        uint32 // next Push adds this much to the used length
	IdxJump        uint16 // next Push advances used.idx by this much extra
	NeverInterrupt bool   // Push never asks for an interrupt
	DelayPublish   bool   // Push writes used entries but holds the idx until Flush
}

// Device is the device side of one queue.
type Device struct{ cfg Config }

// New attaches a device to the queue memory described by cfg.
func New(mem Memory, cfg Config) (*Device, error) { return &Device{cfg: cfg}, nil }

// Pop takes the next available chain, if any. Descriptor errors (address that
// does not resolve, loop, bad indirect table) are returned as errors, as a
// real device would flag DEVICE_NEEDS_RESET.
func (d *Device) Pop() (c Chain, ok bool, err error) { return Chain{}, false, nil }

// Push returns a chain to the driver with written bytes and reports whether
// the driver asked for an interrupt (used_event / NO_INTERRUPT).
func (d *Device) Push(head uint16, written uint32) (interrupt bool) { return false }

// Flush publishes used entries held back by DelayPublish.
func (d *Device) Flush() (interrupt bool) { return false }

// SetNotify tells the driver whether to kick (used.flags NO_NOTIFY, or
// avail_event = next avail index when EventIdx).
func (d *Device) SetNotify(enabled bool) {}

// Misbehave arms misbehaviour switches.
func (d *Device) Misbehave(m Misbehaviour) {}

// Pending reports how many chains are available and not yet popped.
func (d *Device) Pending() int { return 0 }
