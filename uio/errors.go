package uio

import (
	"errors"
	"fmt"
)

// Sentinel errors callers branch on.
var (
	// ErrNoDevice: no PCI function at that address.
	ErrNoDevice = errors.New("no such PCI function")
	// ErrNotBound: the function exists but is not bound to uio_pci_generic.
	ErrNotBound = errors.New("not bound to uio_pci_generic")
	// ErrNoBAR: the BAR is not implemented by the function.
	ErrNoBAR = errors.New("BAR not present")
	// ErrBadAccess: an access outside the BAR, misaligned, or of a width
	// the region cannot do.
	ErrBadAccess = errors.New("bad register access")
	// ErrConfidential: the guest's memory is encrypted (SEV, TDX), so a
	// device cannot reach memory addressed by physical address.
	ErrConfidential = errors.New("confidential guest")
	// ErrNoHugepages: no 2 MiB hugepage could be mapped or reserved.
	ErrNoHugepages = errors.New("no hugepages available")
	// ErrNoPhysAddr: /proc/self/pagemap did not reveal physical addresses.
	ErrNoPhysAddr = errors.New("physical address unavailable")
	// ErrTooBig: a DMA allocation larger than the allocator's page.
	ErrTooBig = errors.New("allocation larger than a page")
	// ErrClosed: the function or allocator was closed.
	ErrClosed = errors.New("closed")
	// ErrGone: the function's registers went away under a mapping (it was
	// hot-unplugged or removed): an access faulted instead of killing the
	// process with SIGBUS.
	ErrGone = errors.New("function gone (BAR access faulted)")
)

// OpError is the error type of this package: "uio: OP ADDR: ERR".
type OpError struct {
	Op   string // "open", "bar 4", "dma alloc", ...
	Addr string // PCI address, may be empty
	Err  error
}

func (e *OpError) Error() string {
	if e.Addr == "" {
		return fmt.Sprintf("uio: %s: %v", e.Op, e.Err)
	}
	return fmt.Sprintf("uio: %s %s: %v", e.Op, e.Addr, e.Err)
}

func (e *OpError) Unwrap() error { return e.Err }
