package driver

import (
	"encoding/binary"
	"fmt"
)

// PCI configuration-space offsets and bits used by the transport.
const (
	pciCommand      = 0x04
	pciStatus       = 0x06
	pciCapPtr       = 0x34
	pciStatusCapLst = 1 << 4 // status register: capability list present

	pciCommandIO          = 1 << 0
	pciCommandMemory      = 1 << 1
	pciCommandBusMaster   = 1 << 2
	pciCommandIntxDisable = 1 << 10

	pciCapIDVendor = 0x09
	pciCapIDMSIX   = 0x11

	msixControl       = 2       // offset of Message Control in the MSI-X capability
	msixControlEnable = 1 << 15 // Message Control: MSI-X enable
)

// Virtio vendor capability types (spec 4.1.4, VIRTIO-NOTES 2.1).
const (
	capCommonCfg = 1
	capNotifyCfg = 2
	capISRCfg    = 3
	capDeviceCfg = 4
	capPCICfg    = 5
)

// pciConfigSize is the part of configuration space the capability list may
// point into (the legacy 256-byte header; extended capabilities are not
// virtio's).
const pciConfigSize = 256

// maxCaps bounds the capability walk: 256 bytes hold at most 48 capabilities
// of 4 bytes after the 64-byte header, so a longer list is a loop.
const maxCaps = 48

// virtioCap is one virtio_pci_cap as read from configuration space.
type virtioCap struct {
	at      int   // offset of the capability in configuration space
	cfgType uint8 // capCommonCfg ...
	bar     uint8
	offset  uint32
	length  uint32
	mult    uint32 // notify_off_multiplier (notify capability only)
}

// pciCaps is what the capability walk found.
type pciCaps struct {
	common, notify, isr, device, pcicfg *virtioCap
	msix                                int // offset of the MSI-X capability, 0 if none
}

func cfgRead8(cs ConfigSpace, off int) (uint8, error) {
	var b [1]byte
	if _, err := cs.ReadAt(b[:], int64(off)); err != nil {
		return 0, fmt.Errorf("read config %#x: %w", off, err)
	}
	return b[0], nil
}

func cfgRead16(cs ConfigSpace, off int) (uint16, error) {
	var b [2]byte
	if _, err := cs.ReadAt(b[:], int64(off)); err != nil {
		return 0, fmt.Errorf("read config %#x: %w", off, err)
	}
	return binary.LittleEndian.Uint16(b[:]), nil
}

func cfgRead32(cs ConfigSpace, off int) (uint32, error) {
	var b [4]byte
	if _, err := cs.ReadAt(b[:], int64(off)); err != nil {
		return 0, fmt.Errorf("read config %#x: %w", off, err)
	}
	return binary.LittleEndian.Uint32(b[:]), nil
}

func cfgWrite16(cs ConfigSpace, off int, v uint16) error {
	var b [2]byte
	binary.LittleEndian.PutUint16(b[:], v)
	if _, err := cs.WriteAt(b[:], int64(off)); err != nil {
		return fmt.Errorf("write config %#x: %w", off, err)
	}
	return nil
}

// readCaps walks the standard capability list (VIRTIO-NOTES 2.1) and keeps
// the first virtio capability of each type it knows, and the MSI-X
// capability. Capabilities with a reserved cfg_type or BAR number are
// ignored (spec 4.1.4). A list that loops, points into the header or past the
// end of configuration space, or holds a truncated virtio capability is an
// error wrapping ErrBadCapability.
func readCaps(cs ConfigSpace) (pciCaps, error) {
	var caps pciCaps
	status, err := cfgRead16(cs, pciStatus)
	if err != nil {
		return caps, err
	}
	if status&pciStatusCapLst == 0 {
		return caps, nil
	}
	ptr, err := cfgRead8(cs, pciCapPtr)
	if err != nil {
		return caps, err
	}
	at := int(ptr &^ 3)
	for n := 0; at != 0; n++ {
		if n == maxCaps {
			return caps, fmt.Errorf("%w: capability list does not end (loop at %#x)", ErrBadCapability, at)
		}
		if at < 0x40 || at+2 > pciConfigSize {
			return caps, fmt.Errorf("%w: capability pointer %#x outside 0x40..0xff", ErrBadCapability, at)
		}
		id, err := cfgRead8(cs, at)
		if err != nil {
			return caps, err
		}
		next, err := cfgRead8(cs, at+1)
		if err != nil {
			return caps, err
		}
		switch id {
		case pciCapIDMSIX:
			if caps.msix == 0 {
				caps.msix = at
			}
		case pciCapIDVendor:
			c, ok, err := readVirtioCap(cs, at)
			if err != nil {
				return caps, err
			}
			if ok {
				caps.keep(c)
			}
		}
		at = int(next &^ 3)
	}
	return caps, nil
}

// keep records c unless a capability of its type was already found: the
// first one is the device's preferred (spec 4.1.4).
func (p *pciCaps) keep(c *virtioCap) {
	var slot **virtioCap
	switch c.cfgType {
	case capCommonCfg:
		slot = &p.common
	case capNotifyCfg:
		slot = &p.notify
	case capISRCfg:
		slot = &p.isr
	case capDeviceCfg:
		slot = &p.device
	case capPCICfg:
		slot = &p.pcicfg
	default:
		return
	}
	if *slot == nil {
		*slot = c
	}
}

// readVirtioCap reads the virtio_pci_cap at at. ok is false for a capability
// the transport must ignore (reserved cfg_type or BAR).
func readVirtioCap(cs ConfigSpace, at int) (c *virtioCap, ok bool, err error) {
	capLen, err := cfgRead8(cs, at+2)
	if err != nil {
		return nil, false, err
	}
	cfgType, err := cfgRead8(cs, at+3)
	if err != nil {
		return nil, false, err
	}
	switch cfgType {
	case capCommonCfg, capNotifyCfg, capISRCfg, capDeviceCfg, capPCICfg:
	default:
		return nil, false, nil // reserved, shared memory, vendor data: not ours
	}
	need := 16
	if cfgType == capNotifyCfg || cfgType == capPCICfg {
		need = 20
	}
	if int(capLen) < need || at+need > pciConfigSize {
		return nil, false, fmt.Errorf("%w: virtio capability type %d at %#x: cap_len %d, need %d", ErrBadCapability, cfgType, at, capLen, need)
	}
	bar, err := cfgRead8(cs, at+4)
	if err != nil {
		return nil, false, err
	}
	if bar > 5 {
		return nil, false, nil // reserved BAR value: ignore (spec 4.1.4)
	}
	c = &virtioCap{at: at, cfgType: cfgType, bar: bar}
	if c.offset, err = cfgRead32(cs, at+8); err != nil {
		return nil, false, err
	}
	if c.length, err = cfgRead32(cs, at+12); err != nil {
		return nil, false, err
	}
	if cfgType == capNotifyCfg {
		if c.mult, err = cfgRead32(cs, at+16); err != nil {
			return nil, false, err
		}
	}
	return c, true, nil
}

// msixEnabled reads the enable bit of the MSI-X capability at at (0: none).
// QEMU moves the legacy device-config offset with exactly this bit
// (msix_enabled()).
func msixEnabled(cs ConfigSpace, at int) (bool, error) {
	if at == 0 {
		return false, nil
	}
	ctl, err := cfgRead16(cs, at+msixControl)
	if err != nil {
		return false, err
	}
	return ctl&msixControlEnable != 0, nil
}

// enableDevice turns on memory (modern) or I/O (legacy) decoding and Bus
// Master in the command register (VIRTIO-NOTES 2.5 step 1), leaving the
// INTx Disable bit as it is.
func enableDevice(cs ConfigSpace, legacy bool) error {
	cmd, err := cfgRead16(cs, pciCommand)
	if err != nil {
		return err
	}
	want := cmd | pciCommandBusMaster | pciCommandMemory
	if legacy {
		want |= pciCommandIO
	}
	if want == cmd {
		return nil
	}
	return cfgWrite16(cs, pciCommand, want)
}
