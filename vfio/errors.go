package vfio

import "errors"

// Sentinel errors of the vfio-pci binding. Open and Close fail with an
// *OpError wrapping them or the sentinels of package uio, whose pieces this
// binding shares (uio.ErrNoDevice, uio.ErrConfidential, uio.ErrNoBAR, ...).
var (
	// ErrNotBound: the function exists but is not bound to vfio-pci.
	ErrNotBound = errors.New("not bound to vfio-pci")
	// ErrNoGroup: the function has no IOMMU group or its /dev/vfio node
	// is missing.
	ErrNoGroup = errors.New("no usable IOMMU group")
	// ErrGroupShared: the IOMMU group holds a device some other driver
	// uses, so VFIO cannot give it to us.
	ErrGroupShared = errors.New("IOMMU group shared with another driver")
	// ErrNoMSIX: the function has no usable MSI-X vectors.
	ErrNoMSIX = errors.New("no MSI-X")
)

// OpError is the error type of Open and Close: "vfio: OP ADDR: ERR".
type OpError struct {
	Op   string // "open", "close"
	Addr string // PCI address
	Err  error
}

func (e *OpError) Error() string { return "vfio: " + e.Op + " " + e.Addr + ": " + e.Err.Error() }

func (e *OpError) Unwrap() error { return e.Err }
