package virtiotest

import "github.com/vserial/vserial/ring/ringtest"

// bus is the Bus a started model sees.
type bus struct{ f *Function }

func (b *bus) Queue(q uint16) ringtest.Queue {
	f := b.f
	f.mu.Lock()
	defer f.mu.Unlock()
	if int(q) >= len(f.queues) || !f.queues[q].enabled {
		return nil
	}
	return f.queues[q].dev
}

func (b *bus) Negotiated() uint64 {
	b.f.mu.Lock()
	defer b.f.mu.Unlock()
	return b.f.accepted
}

// Interrupt sets ISR bit 0 and signals the queue's vector (QEMU virtio_irq).
func (b *bus) Interrupt(q uint16) {
	f := b.f
	f.mu.Lock()
	defer f.mu.Unlock()
	vector := uint16(NoVector)
	if int(q) < len(f.queues) {
		vector = f.queues[q].vector
	}
	f.isr |= 1
	f.signalLocked(vector)
}

// ConfigChanged follows QEMU virtio_notify_config: nothing before DRIVER_OK;
// otherwise ISR = 0x3, generation++, config vector.
func (b *bus) ConfigChanged() {
	f := b.f
	f.mu.Lock()
	defer f.mu.Unlock()
	f.configChangedLocked()
}

func (f *Function) configChangedLocked() {
	if f.status&stDriverOK == 0 {
		return
	}
	f.isr |= 3
	f.generation++
	f.signalLocked(f.cfgVector)
}

// NeedsReset sets DEVICE_NEEDS_RESET and raises a config interrupt (QEMU
// virtio_error).
func (b *bus) NeedsReset() {
	f := b.f
	f.mu.Lock()
	defer f.mu.Unlock()
	f.status |= stNeedsReset
	f.configChangedLocked()
}
