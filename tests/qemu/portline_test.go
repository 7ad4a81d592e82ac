package qemu

import (
	"strings"
	"testing"
)

// TestPortCommandLine pins how ports become QEMU arguments: named and
// unnamed virtserialports, and a virtconsole at port 0.
func TestPortCommandLine(t *testing.T) {
	g := &Guest{Kernel: &Kernel{Vmlinux: "/k/vmlinux"}, Dir: "/tmp/vsq-x", ports: map[string]Port{}, socks: map[string]string{}}
	args := strings.Join(g.commandLine(Options{
		MaxPorts: 8,
		Ports:    []Port{{Console: true}, {Name: "org.a"}, {Nr: 5}},
	}, "/tmp/initrd"), " ")
	for _, want := range []string{
		"-device virtio-serial-pci,id=vs0,max_ports=8 ",
		"-chardev socket,id=c0,path=/tmp/vsq-x/p0.sock,server=on,wait=off -device virtconsole,bus=vs0.0,chardev=c0,nr=0,id=port0 ",
		"-device virtserialport,bus=vs0.0,chardev=c2,nr=2,id=port2,name=org.a ",
		"-device virtserialport,bus=vs0.0,chardev=c5,nr=5,id=port5",
	} {
		if !strings.Contains(args+" ", want) {
			t.Errorf("command line lacks %q:\n%s", want, args)
		}
	}
	if strings.Contains(args, "id=port5,name=") {
		t.Errorf("the unnamed port got a name= property:\n%s", args)
	}
	// Unnamed ports are known by their ID.
	if s := g.PortSocket("port5"); s != "/tmp/vsq-x/p5.sock" {
		t.Errorf("PortSocket(port5) = %q", s)
	}
	if p, ok := g.Port("port0"); !ok || !p.Console || p.Nr != 0 {
		t.Errorf("Port(port0) = %+v, %v", p, ok)
	}
	if p, ok := g.Port("org.a"); !ok || p.Nr != 2 || p.ID != "port2" {
		t.Errorf("Port(org.a) = %+v, %v", p, ok)
	}
}
