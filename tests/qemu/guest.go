package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Port is a virtserialport (or virtconsole) on the device under test,
// backed by a host Unix socket on which QEMU listens.
type Port struct {
	// Name is the port's name property, which the guest sees. Empty means
	// a port without a name (no name= on QEMU's command line); the harness
	// then knows the port by its ID (Guest.Port, PortSocket, DialPort).
	Name string
	// Nr is the port number on the bus (1..max_ports-1); 0 means the
	// port's position in Options.Ports plus one, except for a Console,
	// where it means port 0.
	Nr int
	// ID is the QEMU device id reported in VSERPORT_CHANGE events; empty
	// means "port<Nr>".
	ID string
	// Console makes the port a virtconsole instead of a virtserialport:
	// the only kind QEMU allows at port 0, and the one port of a device
	// without MULTIPORT (max_ports=1).
	Console bool
}

// key is how the harness refers to the port: its name, else its ID.
func (p Port) key() string {
	if p.Name != "" {
		return p.Name
	}
	return p.ID
}

// device is the QEMU device type of the port.
func (p Port) device() string {
	if p.Console {
		return "virtconsole"
	}
	return "virtserialport"
}

// Options describe one guest boot. The zero value boots the guest with a
// virtio-serial-pci device and no ports.
type Options struct {
	Ports []Port
	// MaxPorts sets max_ports on the device; 0 keeps QEMU's default (31).
	MaxPorts int
	// DisableLegacy makes the device modern-only (disable-legacy=on).
	DisableLegacy bool
	// Packed offers the packed virtqueue layout (packed=on,
	// VIRTIO_F_RING_PACKED); it implies DisableLegacy, since only the
	// modern interface can negotiate it.
	Packed bool
	// IOMMU adds an emulated Intel IOMMU (intel_iommu=on in the guest) and
	// puts the device behind it (iommu_platform=on, modern only), for VFIO.
	IOMMU bool
	// NoIOMMUVFIO replaces the guest's vfio.ko with one rebuilt with
	// CONFIG_VFIO_NOIOMMU=y (EnsureNoIOMMUVFIO), carries vfio-pci, and
	// turns the mode on (NoIOMMUParam): binding the device to vfio-pci
	// then gives /dev/vfio/noiommu-N. Not with IOMMU.
	NoIOMMUVFIO bool
	// DeviceProps are extra ",key=value" properties for virtio-serial-pci.
	DeviceProps string
	// NoDevice boots without the device under test.
	NoDevice bool
	// Files are added to the initramfs (e.g. BuildAgent(t)).
	Files []File
	// QGA carries Debian's qemu-guest-agent, unmodified, at QGAPath with
	// its loader and shared libraries (about 6 MB more initramfs; see
	// EnsureQGA). Start it with StartQGA.
	QGA bool
	// Socat carries Debian's socat, unmodified, at SocatPath with its
	// loader and shared libraries (a few MB more initramfs), for the
	// benchmark's kernel driver + socat arm.
	Socat bool
	// CPUs is QEMU's -smp; 0 keeps QEMU's default (one vCPU).
	CPUs int
	// Modules are kernel modules to carry beyond GuestModules.
	Modules []string
	// Append is added to the kernel command line.
	Append string
	// Memory is QEMU's -m; default 512M.
	Memory string
	// ExtraArgs are appended to QEMU's command line.
	ExtraArgs []string
	// BootTimeout bounds the wait for the guest helper; default 3 minutes.
	BootTimeout time.Duration
}

// Guest is a running QEMU guest whose helper serves commands on the serial
// console. Boot registers the cleanup that kills it.
type Guest struct {
	// Kernel is the guest kernel.
	Kernel *Kernel
	// Dir holds the initramfs, sockets and logs of this boot.
	Dir string
	// Args is QEMU's full command line, Args[0] being the program.
	Args []string
	// QMP is connected and has negotiated capabilities.
	QMP *QMP
	// BootTime is the time from starting QEMU to the helper's READY.
	BootTime time.Duration

	ports map[string]Port
	socks map[string]string

	cmd    *exec.Cmd
	stdin  io.WriteCloser
	wmu    sync.Mutex
	ready  chan struct{}
	exited chan struct{}

	mu         sync.Mutex
	nextID     uint64
	calls      map[uint64]*call
	tail       []string // console lines without protocol noise
	transcript []string
	exitErr    error
	conLog     *os.File
}

type call struct {
	argv  []string
	start time.Time
	pid   chan int
	done  chan struct{}
	out   bytes.Buffer
	code  int
}

// ExitError is a guest command that exited with a non-zero status (or, as
// -1, could not start; 128+N means it died of signal N).
type ExitError struct {
	Argv   []string
	Code   int
	Output string
}

func (e *ExitError) Error() string {
	return fmt.Sprintf("guest: %s: exit status %d: %s", strings.Join(e.Argv, " "), e.Code, strings.TrimSpace(e.Output))
}

// maxGuests bounds the guests running at once in one test process.
const maxGuests = 2

var guestSlots = make(chan struct{}, maxGuests)

// ErrGuestExited is returned for commands that cannot finish because QEMU
// is gone.
var ErrGuestExited = errors.New("guest: QEMU exited")

// Boot starts a guest and waits until its helper serves commands. The guest
// is killed when the test ends; on failure the QEMU command line, the
// console and the command transcript are logged.
func Boot(t testing.TB, opts Options) *Guest {
	t.Helper()
	requireHost(t)
	cache, err := CacheDir()
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	k, err := EnsureKernel(cache)
	if err != nil {
		t.Fatalf("guest kernel: %v", err)
	}
	base, err := EnsureBaseImage(cache)
	if err != nil {
		t.Fatalf("guest initramfs: %v", err)
	}
	helper := BuildGoBinary(t, "./tests/qemu/guest")
	modNames := append(append([]string{}, GuestModules...), opts.Modules...)
	if opts.NoIOMMUVFIO {
		if opts.IOMMU {
			t.Fatal("guest options: NoIOMMUVFIO and IOMMU exclude each other")
		}
		modNames = append(modNames, "vfio-pci")
	}
	mods, err := k.ModuleFiles(modNames...)
	if err != nil {
		t.Fatalf("guest modules: %v", err)
	}
	if opts.NoIOMMUVFIO {
		ko, err := EnsureNoIOMMUVFIO(cache, k)
		if err != nil {
			t.Fatalf("guest modules: %v", err)
		}
		if err := replaceModule(mods, "kernel/drivers/vfio/vfio.ko", ko); err != nil {
			t.Fatalf("guest modules: %v", err)
		}
	}
	var qgaFiles []File
	if opts.QGA {
		q, err := EnsureQGA(cache)
		if err != nil {
			t.Fatalf("guest qemu-ga: %v", err)
		}
		if qgaFiles, err = q.Files(); err != nil {
			t.Fatalf("guest qemu-ga: %v", err)
		}
	}
	if opts.Socat {
		f, err := socatFiles(cache)
		if err != nil {
			t.Fatalf("guest socat: %v", err)
		}
		qgaFiles = append(qgaFiles, f...)
	}
	setup := time.Since(t0)

	// Short directory: socket paths must fit in sun_path (108 bytes).
	dir, err := os.MkdirTemp("/tmp", "vsq-")
	if err != nil {
		t.Fatal(err)
	}
	g := &Guest{
		Kernel: k, Dir: dir,
		ports: map[string]Port{}, socks: map[string]string{},
		ready: make(chan struct{}), exited: make(chan struct{}),
		calls: map[uint64]*call{},
	}
	started := false
	t.Cleanup(func() {
		if !started { // shutdown owns the directory once QEMU runs
			os.RemoveAll(dir)
		}
	})
	files := append([]File{
		{Dst: HelperPath, Src: helper, Mode: 0o755},
		// For programs that load modules themselves (vserial-agent).
		{Dst: "/sbin/modprobe", Symlink: HelperPath},
	}, mods...)
	files = append(files, qgaFiles...)
	files = append(files, opts.Files...)
	initrd := filepath.Join(dir, "initrd.cpio")
	if err := writeInitramfs(initrd, base, files); err != nil {
		t.Fatalf("guest initramfs: %v", err)
	}
	g.Args = g.commandLine(opts, initrd)
	script := "#!/bin/sh\n# Reproduces this boot; the serial console is on stdin/stdout.\nexec " + shellJoin(g.Args) + "\n"
	_ = os.WriteFile(filepath.Join(dir, "run.sh"), []byte(script), 0o755)
	t.Logf("guest: kernel %s, setup %v, QEMU command line:\n%s", k.Version, setup.Round(time.Millisecond), shellJoin(g.Args))

	if g.conLog, err = os.Create(filepath.Join(dir, "console.log")); err != nil {
		t.Fatal(err)
	}
	stderr, err := os.Create(filepath.Join(dir, "qemu.stderr"))
	if err != nil {
		t.Fatal(err)
	}
	g.cmd = exec.Command(g.Args[0], g.Args[1:]...)
	g.cmd.Stderr = stderr
	// QEMU must not outlive a test binary that dies (timeout panic, kill).
	g.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if g.stdin, err = g.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := g.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	// At most maxGuests guests at once, whatever -parallel says: each
	// TCG guest keeps a host core busy.
	guestSlots <- struct{}{}
	t.Cleanup(func() { <-guestSlots }) // runs after shutdown (cleanups are LIFO)
	start := time.Now()
	if err := g.cmd.Start(); err != nil {
		t.Fatalf("starting QEMU: %v", err)
	}
	started = true
	t.Cleanup(func() { g.shutdown(t, stderr) })
	go g.readConsole(stdout)

	timeout := opts.BootTimeout
	if timeout == 0 {
		timeout = 3 * time.Minute
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if g.QMP, err = DialQMP(ctx, filepath.Join(dir, "qmp.sock")); err != nil {
		t.Fatalf("guest: %v", err)
	}
	select {
	case <-g.ready:
	case <-g.exited:
		t.Fatalf("guest: QEMU exited before the helper was ready: %v", g.exitErr)
	case <-ctx.Done():
		t.Fatalf("guest: helper not ready after %v", timeout)
	}
	g.BootTime = time.Since(start)
	t.Logf("guest: ready in %v", g.BootTime.Round(time.Millisecond))
	return g
}

func (g *Guest) commandLine(opts Options, initrd string) []string {
	mem := opts.Memory
	if mem == "" {
		mem = "512M"
	}
	machine, appendLine := "q35", opts.Append
	if opts.NoIOMMUVFIO {
		appendLine = NoIOMMUParam + " " + appendLine
	}
	if opts.IOMMU {
		machine = "q35,kernel-irqchip=split"
		// no_timer_check: on a loaded host TCG can miss the kernel's
		// check that the timer interrupt works through the remapped
		// IO-APIC, and the guest panics at boot ("timer doesn't work
		// through Interrupt-remapped IO-APIC"); seen in the full suite.
		appendLine = "intel_iommu=on no_timer_check " + appendLine
	}
	args := []string{
		"qemu-system-x86_64",
		"-machine", machine, "-accel", "tcg", "-m", mem,
		// Threads named after their role ("CPU 0/TCG", "worker"), for
		// the benchmark's per-thread CPU (qemuthreads.go).
		"-name", "debug-threads=on",
	}
	if opts.CPUs > 0 {
		args = append(args, "-smp", strconv.Itoa(opts.CPUs))
	}
	args = append(args,
		"-nographic", "-no-reboot", "-nic", "none",
		"-kernel", g.Kernel.Vmlinux, "-initrd", initrd,
		"-append", strings.TrimSpace("console=ttyS0 panic=-1 loglevel=4 "+appendLine),
		"-chardev", "stdio,id=con0,signal=off", "-serial", "chardev:con0", "-monitor", "none",
		"-qmp", "unix:"+filepath.Join(g.Dir, "qmp.sock")+",server=on,wait=off",
	)
	if opts.IOMMU {
		// Before the device it translates for.
		args = append(args, "-device", "intel-iommu,intremap=on,caching-mode=on")
	}
	if !opts.NoDevice {
		dev := "virtio-serial-pci,id=vs0"
		if opts.IOMMU {
			dev += ",iommu_platform=on"
		}
		if opts.MaxPorts > 0 {
			dev += ",max_ports=" + strconv.Itoa(opts.MaxPorts)
		}
		if opts.Packed {
			dev += ",packed=on"
		}
		if opts.DisableLegacy || opts.IOMMU || opts.Packed { // QEMU: legacy and ACCESS_PLATFORM exclude each other
			dev += ",disable-legacy=on"
		}
		args = append(args, "-device", dev+opts.DeviceProps)
		for i, p := range opts.Ports {
			p = g.addPort(p, i+1)
			sock := g.socks[p.key()]
			spec := fmt.Sprintf("%s,bus=vs0.0,chardev=c%d,nr=%d,id=%s", p.device(), p.Nr, p.Nr, p.ID)
			if p.Name != "" {
				spec += ",name=" + p.Name
			}
			args = append(args,
				"-chardev", fmt.Sprintf("socket,id=c%d,path=%s,server=on,wait=off", p.Nr, sock),
				"-device", spec)
		}
	}
	return append(args, opts.ExtraArgs...)
}

func (g *Guest) addPort(p Port, defNr int) Port {
	if p.Nr == 0 && !p.Console {
		p.Nr = defNr
	}
	if p.ID == "" {
		p.ID = fmt.Sprintf("port%d", p.Nr)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.ports[p.key()] = p
	g.socks[p.key()] = filepath.Join(g.Dir, fmt.Sprintf("p%d.sock", p.Nr))
	return p
}

func (g *Guest) shutdown(t testing.TB, stderr *os.File) {
	if g.QMP != nil {
		g.QMP.Close()
	}
	_ = g.cmd.Process.Kill()
	select {
	case <-g.exited:
	case <-time.After(30 * time.Second):
		t.Errorf("guest: QEMU (pid %d) did not exit after SIGKILL", g.cmd.Process.Pid)
	}
	stderr.Close()
	g.conLog.Close()
	keep := envSet(EnvKeep)
	if t.Failed() {
		g.mu.Lock()
		t.Logf("guest: QEMU command line:\n%s", shellJoin(g.Args))
		t.Logf("guest: console (last %d lines, protocol lines omitted):\n%s", len(g.tail), strings.Join(g.tail, "\n"))
		t.Logf("guest: commands:\n%s", strings.Join(g.transcript, "\n"))
		g.mu.Unlock()
		if b, _ := os.ReadFile(stderr.Name()); len(b) > 0 {
			t.Logf("guest: QEMU stderr:\n%s", b)
		}
		if !keep {
			t.Logf("guest: set %s=1 to keep %s (initramfs, console.log, run.sh)", EnvKeep, g.Dir)
		}
	}
	if keep {
		t.Logf("guest: kept %s; reproduce with %s", g.Dir, filepath.Join(g.Dir, "run.sh"))
		return
	}
	os.RemoveAll(g.Dir)
}

// Console returns the console lines seen so far (protocol lines omitted).
func (g *Guest) Console() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return strings.Join(g.tail, "\n")
}

// shellJoin quotes args for a POSIX shell.
func shellJoin(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		if a != "" && strings.Trim(a, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./=:,+@") == "" {
			q[i] = a
		} else {
			q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
	}
	return strings.Join(q, " ")
}
