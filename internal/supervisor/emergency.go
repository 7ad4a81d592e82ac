package supervisor

// maxEmergencyLine bounds a line written through the emergency channel:
// each byte is a register write the host handles on its own.
const maxEmergencyLine = 240

// Line is "PROGRAM: MSG\n" as it goes through an emergency channel
// (VIRTIO_CONSOLE_F_EMERG_WRITE: QEMU puts it on the first virtconsole,
// usually port 0): control characters in msg become spaces and a long
// message is cut, so one call is one line.
func Line(program, msg string) []byte {
	b := []byte(program + ": ")
	for _, c := range []byte(msg) {
		if c < 0x20 || c == 0x7f {
			c = ' '
		}
		b = append(b, c)
	}
	if len(b) > maxEmergencyLine-1 {
		b = append(b[:maxEmergencyLine-4], "..."...)
	}
	return append(b, '\n')
}

// emergency writes Line(Config.Program, msg) through m's emergency
// channel, for the host to see while no port is up or after the device
// failed. Best effort: a device without the channel is logged at debug
// level.
func (s *Supervisor) emergency(m *managed, msg string) {
	b := Line(s.cfg.Program, msg)
	if err := m.dev.EmergencyWrite(b); err != nil {
		s.log.Debug("no emergency write", "pci", m.addr, "err", err)
		return
	}
	s.log.Debug("emergency write", "pci", m.addr, "line", string(b[:len(b)-1]))
}
