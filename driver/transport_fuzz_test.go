package driver

import (
	"context"
	"encoding/binary"
	"sync"
	"testing"
	"time"

	"github.com/vserial/vserial/driver/virtiotest"
)

// valueScript feeds the values a hostile device shows in its transport and
// configuration registers: each read of num_queues, queue_size,
// config_generation or the device configuration takes one byte of the
// script; an odd byte replaces the register's value with the next bytes of
// the script (its width), an even one lets the real value through. The
// values therefore change between reads, as a device (or a VMM racing
// with itself) may change them. Every read is logged with the value the
// driver saw.
type valueScript struct {
	mu  sync.Mutex
	b   []byte
	log []scriptRead
}

type scriptRead struct {
	reg string // "gen", "numq", "qsize", "cfg", "vector" (legacy MSI-X vectors)
	off uint64 // cfg: offset in the device configuration
	v   uint32
}

func (s *valueScript) value(reg string, off uint64, width int, real uint32) uint32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	v := real
	if len(s.b) > 0 {
		c := s.b[0]
		s.b = s.b[1:]
		if c&1 != 0 && len(s.b) >= width {
			var w [4]byte
			copy(w[:], s.b[:width])
			s.b = s.b[width:]
			v = binary.LittleEndian.Uint32(w[:])
		}
	}
	s.log = append(s.log, scriptRead{reg, off, v})
	return v
}

// scriptBAR intercepts the reads valueScript scripts on one BAR of the
// fake function; everything else goes to the register file.
type scriptBAR struct {
	BAR
	s          *valueScript
	legacy     bool
	legacyBase uint64 // where the legacy device configuration starts: 20, or 24 with MSI-X
}

func (b scriptBAR) reg(off uint64) (string, uint64) {
	if b.legacy {
		switch {
		case off == 12:
			return "qsize", 0
		case off >= b.legacyBase:
			return "cfg", off - b.legacyBase
		case off >= 20:
			return "vector", 0
		}
		return "", 0
	}
	switch {
	case off == virtiotest.CommonOffset+commonNumQ:
		return "numq", 0
	case off == virtiotest.CommonOffset+commonQSize:
		return "qsize", 0
	case off == virtiotest.CommonOffset+commonCfgGen:
		return "gen", 0
	case off >= virtiotest.DeviceOffset && off < virtiotest.NotifyOffset:
		return "cfg", off - virtiotest.DeviceOffset
	}
	return "", 0
}

func (b scriptBAR) Read8(off uint64) (uint8, error) {
	v, err := b.BAR.Read8(off)
	if r, at := b.reg(off); r != "" && err == nil {
		v = uint8(b.s.value(r, at, 1, uint32(v)))
	}
	return v, err
}

func (b scriptBAR) Read16(off uint64) (uint16, error) {
	v, err := b.BAR.Read16(off)
	if r, at := b.reg(off); r != "" && err == nil {
		v = uint16(b.s.value(r, at, 2, uint32(v)))
	}
	return v, err
}

func (b scriptBAR) Read32(off uint64) (uint32, error) {
	v, err := b.BAR.Read32(off)
	if r, at := b.reg(off); r != "" && err == nil {
		v = b.s.value(r, at, 4, v)
	}
	return v, err
}

// scriptFunction is the fake function with its register BAR scripted.
type scriptFunction struct {
	Function
	s      *valueScript
	legacy bool
	msix   bool
}

func (f scriptFunction) BAR(i int) (BAR, error) {
	b, err := f.Function.BAR(i)
	if err != nil || (i != virtiotest.ModernBAR && !(f.legacy && i == 0)) {
		return b, err
	}
	base := uint64(20)
	if f.msix {
		base = 24
	}
	return scriptBAR{b, f.s, i == 0, base}, nil
}

// stableMaxNr lists the max_nr_ports values (capped as the driver caps
// them) the driver may have taken: on
// the modern interface, a read of offset 4 between two reads of the same
// config_generation (spec 2.5); on the legacy one, any read.
func (s *valueScript) stableMaxNr(legacy bool) map[uint32]bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	ok := map[uint32]bool{}
	for i, r := range s.log {
		if r.reg != "cfg" || r.off != 4 {
			continue
		}
		if legacy {
			ok[min(r.v, MaxPorts)] = true
			continue
		}
		if i > 0 && i+1 < len(s.log) && s.log[i-1].reg == "gen" && s.log[i+1].reg == "gen" && s.log[i-1].v == s.log[i+1].v {
			ok[min(r.v, MaxPorts)] = true
		}
	}
	return ok
}

// FuzzTransportValues brings a device up while its num_queues, queue sizes,
// config_generation and configuration fields change from read to read.
// Open must fail with an error or give a device that keeps within what it
// read: at most Config.MaxPorts ports, queue sizes that are powers of two
// within the limits, a max_nr_ports read under a stable generation; a
// failed Open leaves no DMA memory behind, and Close returns all of it in
// bounded time.
func FuzzTransportValues(f *testing.F) {
	// The modern bring-up reads num_queues, then max_nr_ports between two
	// reads of config_generation, then each queue's size twice (QueueMax,
	// SetupQueue). A 0 lets a read through; 1 and the value replace it.
	f.Add(uint8(0), []byte{})
	f.Add(uint8(0), []byte{1, 0xff, 0xff})                         // num_queues 0xffff
	f.Add(uint8(0), []byte{1, 3, 0})                               // num_queues 3: no port 0 transmitq
	f.Add(uint8(0), []byte{0, 0, 1, 0xff, 0xff, 0xff, 0xff})       // max_nr_ports 2^32-1
	f.Add(uint8(0), []byte{0, 0, 1, 0, 0, 0, 0})                   // max_nr_ports 0
	f.Add(uint8(0), []byte{0, 0, 0, 0, 0, 1, 64, 0})               // queue 0 shrinks between its two reads
	f.Add(uint8(0), []byte{0, 0, 0, 0, 1, 0, 1, 0, 1})             // queue 0: 256, then 1
	f.Add(uint8(0), []byte{0, 0, 0, 0, 1, 100, 0})                 // a queue size that is not a power of two
	f.Add(uint8(0), []byte{0, 1, 1, 1, 9, 0, 0, 0, 1, 2, 0, 0, 0}) // max_nr_ports 9 read while the generation moved: retried
	f.Add(uint8(2), []byte{1, 0, 1, 1, 0, 0, 1, 0, 1})             // legacy: QUEUE_NUM changes
	f.Add(uint8(0x14), []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}) // MSI-X, F_SIZE
	unstable := []byte{0}
	for i := range 2 * configRetries { // config_generation never the same twice
		unstable = append(unstable, 1, byte(2*i), 0, 1, byte(2*i+1))
	}
	f.Add(uint8(0), unstable)
	f.Fuzz(func(t *testing.T, opts uint8, script []byte) {
		if len(script) > 512 {
			script = script[:512]
		}
		legacy := opts&2 != 0
		m := virtiotest.NewConsole(virtiotest.ConsoleConfig{MaxPorts: 4, OfferSize: opts&4 != 0})
		vectors := int(opts>>4) % 4
		vf, err := virtiotest.New(m, virtiotest.Options{LegacyOnly: legacy, MSIXVectors: vectors})
		if err != nil {
			t.Fatal(err)
		}
		defer vf.Close() // the device lies: its protocol complaints are expected
		s := &valueScript{b: script}
		fn := scriptFunction{fakeFunction{vf}, s, legacy, vectors > 0}
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		d, err := Open(ctx, fn, Config{MaxPorts: 2, MaxResets: 2, RxBuffers: 4, TxBuffers: 2, AnnounceWait: -1, CloseFlush: -1})
		if err != nil {
			if n, b := vf.Heap().Live(); n != 0 {
				t.Fatalf("Open failed (%v) and left %d allocations (%d bytes)", err, n, b)
			}
			return
		}
		if n := d.MaxPorts(); n == 0 || n > 2 {
			t.Errorf("serving %d port ids, cap 2", n)
		}
		if d.multiport {
			if ok := s.stableMaxNr(legacy); !ok[d.maxNr] {
				t.Errorf("max_nr_ports %d was never read under a stable generation (stable reads: %v)\nreads: %v", d.maxNr, ok, s.log)
			}
		}
		for qi, q := range d.queues {
			if q == nil {
				continue
			}
			limit := uint16(maxQueueSize)
			if legacy {
				limit = maxLegacyQueueSize
			}
			if n := q.Size(); n == 0 || n&(n-1) != 0 || n > limit {
				t.Errorf("queue %d has size %d", qi, n)
			}
		}
		closed := make(chan error, 1)
		go func() { closed <- d.Close() }()
		select {
		case <-closed:
		case <-time.After(testTimeout):
			t.Fatal("Close did not return")
		}
		if n, b := vf.Heap().Live(); n != 0 {
			t.Errorf("after Close %d allocations (%d bytes) still live", n, b)
		}
	})
}
