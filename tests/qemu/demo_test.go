package qemu

import (
	"bufio"
	"context"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestDemo is what scripts/demo runs: a guest boots with vserial-agent, and
// a host program and a guest program exchange data through two named
// ports. Each step is logged in plain words; the bytes are checked.
func TestDemo(t *testing.T) {
	t.Parallel()
	const (
		greetPort = "org.vserial.demo.greeting"
		bulkPort  = "org.vserial.demo.bulk"
	)
	step := func(format string, args ...any) { t.Helper(); t.Logf("▶ "+format, args...) }
	step("Booting a Linux guest under QEMU (TCG) with a virtio-serial device and two named ports, %s and %s; "+
		"the guest image carries vserial-agent.", greetPort, bulkPort)
	a := bootAgent(t, Options{Ports: []Port{{Name: greetPort}, {Name: bulkPort}}, MaxPorts: 4}, greetPort, bulkPort)
	g := a.g
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	step("The guest booted in %v. vserial-agent took the PCI function from the kernel (uio_pci_generic), "+
		"drives the device itself, and published one Unix socket per port:", g.BootTime.Round(time.Millisecond))
	names, err := ls(ctx, g, AgentSocketDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if !strings.HasPrefix(n, ".") {
			step("    %s/%s", AgentSocketDir, n)
		}
	}

	step("Host program: connecting to QEMU's chardev socket for %s (%s).", greetPort, g.PortSocket(greetPort))
	conn := g.DialPort(t, greetPort)
	step("Guest program: connecting to %s and waiting for a line.", AgentSocket(greetPort))
	guest, err := g.Start(ctx, "greet", AgentSocket(greetPort), "hello from the guest")
	if err != nil {
		t.Fatal(err)
	}
	const hello = "hello from the host"
	step("Host program writes %q.", hello)
	stop := deadline(ctx, conn)
	if _, err := conn.Write([]byte(hello + "\n")); err != nil {
		t.Fatal(err)
	}
	step("Host program waits for the guest's answer...")
	line, err := bufio.NewReader(conn).ReadString('\n')
	stop()
	if err != nil {
		t.Fatalf("host reading the answer: %v (got %q)", err, line)
	}
	out, err := guest.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	read := greetRead(out)
	step("Guest program read %q from its socket and answered %q.", read, "hello from the guest")
	if read != hello {
		t.Errorf("the guest read %q, the host wrote %q", read, hello)
	}
	step("Host program read %q.", strings.TrimSuffix(line, "\n"))
	if line != "hello from the guest\n" {
		t.Errorf("the host read %q", line)
	}

	step("Bulk data on %s: the host sends 4 MiB, the guest checks its sha256; then the guest sends 4 MiB back "+
		"and the host checks it.", bulkPort)
	bulk := g.DialPort(t, bulkPort)
	tr, err := SendToGuest(ctx, g, bulk, AgentSocket(bulkPort), 4<<20, 1)
	if err != nil {
		t.Fatalf("host→guest: %v", err)
	}
	step("    host→guest: %d bytes, sha256 %.16s…, identical, %.1f MB/s", tr.Bytes, tr.SHA256, tr.MBps)
	tr, err = ReceiveFromGuest(ctx, g, bulk, AgentSocket(bulkPort), 4<<20, 2)
	if err != nil {
		t.Fatalf("guest→host: %v", err)
	}
	step("    guest→host: %d bytes, sha256 %.16s…, identical, %.1f MB/s", tr.Bytes, tr.SHA256, tr.MBps)

	l, listing, err := a.list(ctx)
	if err != nil {
		t.Fatal(err)
	}
	step("`vserial-agent list --json` in the guest shows the ports and their counters:\n%s", strings.TrimSpace(listing))
	if p, ok := l.port(AgentSocket(greetPort)); !ok || p.BytesIn != uint64(len(hello)+1) || p.BytesOut != uint64(len("hello from the guest")+1) {
		t.Errorf("list for %s: %+v (found %v)", greetPort, p, ok)
	}

	step("Stopping vserial-agent with SIGTERM: it closes the ports, gives the device back and removes its sockets.")
	log, err := a.stop(ctx)
	if err != nil {
		t.Fatalf("vserial-agent exit: %v\n%s", err, log)
	}
	step("vserial-agent exited 0. Its log:\n%s", strings.TrimSpace(log))
	if _, err := g.Run(ctx, "wait-gone", AgentSocket(greetPort), "10"); err != nil {
		t.Error(err)
	}
	step("Done.")
}

// greetRead returns the line the guest's greet built-in printed as read.
func greetRead(out string) string {
	for line := range strings.Lines(out) {
		if q, ok := strings.CutPrefix(strings.TrimSpace(line), "read="); ok {
			if s, err := strconv.Unquote(q); err == nil {
				return s
			}
		}
	}
	return ""
}
