package driver

// MSI-X vectors: which vector each queue signals (set up during bring-up).

import "fmt"

// setupVectors picks the MSI-X layout. Vector 0 carries configuration
// changes and the control queues; with n ≥ 2 vectors the data queues of
// port id p are on vector 1 + p mod (n-1): with QEMU's default of two
// vectors every data queue shares vector 1, with more each port (up to
// n-1 of them) has its own, so a wake-up services only the ports whose
// vector fired. With one vector everything is on 0; without MSI-X, none
// (INTx).
func (d *Device) setupVectors() error {
	n := d.fn.IRQ().MSIXVectors()
	if n < 0 || n > 0x800 { // the MSI-X table size field is 11 bits
		return fmt.Errorf("driver: the interrupt source reports %d MSI-X vectors", n)
	}
	d.nvec = n
	d.vectorsChosen = true
	d.vecConfig = 0
	if n == 0 {
		d.vecConfig = NoVector
	}
	return nil
}

// queueVector is the MSI-X vector of queue qi (see setupVectors).
func (d *Device) queueVector(qi uint16) uint16 {
	switch {
	case d.nvec == 0:
		return NoVector
	case d.nvec == 1:
		return 0
	}
	var port uint32
	switch {
	case !d.multiport || qi < 2:
		port = 0
	case qi == controlRxQueue || qi == controlTxQueue:
		return d.vecConfig
	default:
		port = uint32(qi)/2 - 1
	}
	return uint16(1 + port%uint32(d.nvec-1))
}

// vectorBit is the bit of vector v in a WaitVectors set.
func vectorBit(v uint16) uint64 { return 1 << min(v, 63) }
