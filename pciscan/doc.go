// Package pciscan finds PCI functions in sysfs and moves them between kernel
// drivers.
//
// Every function takes the sysfs root ("/sys" in production) as a parameter,
// so tests run against captured trees in a temporary directory and never
// touch the machine's devices.
//
// Contract:
//
//   - Scan reads /sys/bus/pci/devices/* and parses each function's identity
//     files strictly: a file with content other than one "0x"-prefixed hex
//     number of the expected width is an error naming that file, never a panic
//     and never a silently zero field.
//   - IsConsole applies the virtio-console matching rule (VIRTIO-NOTES §1):
//     vendor 0x1af4 and (device 0x1043, or device 0x1003 with subsystem
//     device 3).
//   - Take moves one function to a driver (uio_pci_generic, vfio-pci)
//     through driver_override, unbind and drivers_probe (falling back to the
//     driver's bind file), then verifies that the driver symlink names the new
//     driver. It refuses a function that another driver holds unless force
//     is set. Restore gives the function back.
//   - Addresses are checked against the canonical form DDDD:BB:DD.F before
//     they are joined to any path, so an address cannot escape sysfs.
//   - Watch reports the kernel's uevents about PCI functions (added,
//     removed, bound, unbound), accepting only messages the kernel itself
//     sent, so a running agent learns of hot-plug without polling sysfs.
//
// Package pciscan does not load kernel modules (cmd does that); ModuleLoaded
// and DriverRegistered only report whether it has happened. It knows nothing
// about virtio beyond the IDs in IsConsole and imports no other vserial
// package. It does not use u-root's pkg/pci: that reads vendor, device and
// class, but not the subsystem IDs, driver and IOMMU group matched on here,
// and binds nothing.
package pciscan
