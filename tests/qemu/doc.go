// Package qemu boots real Linux guests under QEMU (TCG, no KVM needed) and
// checks vserial — and the in-kernel virtio_console driver it is compared
// with — from the host side, through the ports' chardev sockets and QMP.
// It is test support: nothing outside tests imports it.
//
// # What a boot is made of
//
//   - Kernel: the Debian package linux-image-amd64 depends on, resolved with
//     apt-cache, fetched with apt-get download and unpacked with dpkg -x into
//     the cache (never installed); depmod -b makes its modules.dep, and the
//     uncompressed vmlinux is cut out of vmlinuz (ExtractVmlinux) so QEMU
//     boots it through the PVH entry without seconds of decompression.
//   - Base initramfs: u-root v0.16.0 built from this module (go tool u-root
//     with the command packages spelled out, each a tool dependency in
//     go.mod), cached under a key of the u-root version and command list.
//   - Per-boot archive, appended to a copy of the base in milliseconds: the
//     guest helper (tests/qemu/guest, started by u-root's init as
//     /bin/uinit), the kernel modules in GuestModules with their
//     dependencies and a matching modules.dep under /lib/modules/VERSION,
//     and Options.Files (BuildAgent adds cmd/vserial-agent).
//   - No-IOMMU vfio.ko (Options.NoIOMMUVFIO): Debian builds vfio without
//     CONFIG_VFIO_NOIOMMU, so EnsureNoIOMMUVFIO rebuilds that one module out
//     of tree from linux-source-X.Y of the kernel's exact Debian version (read
//     from the kernel's banner) against the matching linux-headers and
//     linux-kbuild packages (downloaded and unpacked in the cache, never
//     installed) with the kernel's compiler (gcc-12), checks that every
//     symbol it exports keeps the CRC in the kernel's Module.symvers (so
//     Debian's vfio-pci loads on it), strips it and caches it keyed by the
//     banner: about 20 s once, nothing after. It replaces Debian's vfio.ko
//     in the initramfs, and vfio.enable_unsafe_noiommu_mode=1 on the kernel
//     command line reaches the module through the helper's modprobe. The
//     module is unsigned; Debian kernels load it (no MODULE_SIG_FORCE).
//   - qemu-guest-agent (Options.QGA): EnsureQGA downloads Debian's
//     qemu-guest-agent and its Depends closure (apt-cache depends --recurse,
//     apt-get download, dpkg -x into the cache; never installed, the
//     libraries come from the same archive as the agent, not the host), and
//     ELFClosure carries /usr/sbin/qemu-ga with what the loader opens:
//     PT_INTERP and DT_NEEDED recursively (glibc, glib, pcre2, libudev,
//     libnuma, liburing; about 6 MB), found in the default library
//     directories as ld.so would without an ld.so.cache. StartQGA runs it
//     with --method=unix-listen.
//   - socat (Options.Socat, benchmark guests only): Debian's socat and its
//     Depends closure, fetched and carried the same way (EnsureDebTree,
//     ELFClosure), at /usr/bin/socat.
//   - QEMU: qemu-system-x86_64 -machine q35 -accel tcg -m 512M (-smp N with
//     Options.CPUs), the serial console on QEMU's stdin/stdout, QMP on a
//     Unix socket, the device under test virtio-serial-pci (id vs0) and one
//     virtserialport (virtconsole with Port.Console) per Port with a
//     listening Unix socket chardev.
//
// The helper serves commands sent over the serial console (protocol in
// internal/wire): Guest.Run and Guest.Start run its built-ins (modprobe,
// vports, sink, source, echo, pingpong, cputime, write, wait-path, minish,
// ptyxfer, and for the benchmark calib, msink, msource, trickle, hold,
// procsnap, wait-nochild, ...) or
// any program in the guest. Boot once per QEMU command line and run many
// cases in that boot: a boot to the helper takes about 2 s. At most two
// guests run at once in a test process (Boot waits for a slot): under TCG
// each keeps a host core busy.
//
// # Tests and benchmarks
//
//   - TestKernelDriverBaseline: the in-kernel virtio_console driver on two
//     named ports: data both ways byte-exact (1 B, 64 KiB, 8 MiB),
//     VSERPORT_CHANGE events, hot-plug and unplug, and the hand-over of the
//     function to uio_pci_generic that vserial-agent relies on.
//   - TestIOMMUGuestBindsVFIO: with Options.IOMMU the device sits in an
//     IOMMU group and binds to vfio-pci (the VFIO mode's guest).
//   - TestNoIOMMUGuestBindsVFIO: with Options.NoIOMMUVFIO the rebuilt
//     vfio.ko runs in no-IOMMU mode and the device, in no IOMMU group, binds
//     to vfio-pci and gets /dev/vfio/noiommu-N.
//   - TestAgentMultiport: vserial-agent on the default (transitional,
//     0x1003) device with eight ports: socket names (named ports, an unnamed
//     port as vport0p4), list --json, data both ways byte-exact on three
//     ports at once (1 B to 24 MiB), 8 MiB echoed full duplex on one port,
//     host bytes held until a client connects, VSERPORT_CHANGE on client
//     connect and disconnect, a second client rejected, the host away and
//     back with no guest→host byte lost or duplicated, a client that writes
//     and leaves while the host is away (port held, bytes delivered later),
//     hot-plug and unplug (named and unnamed), idle CPU and resident memory,
//     SIGTERM (exit 0, sockets removed, port closed for the host). A case
//     that fails with the agent still running logs its goroutine dump
//     (SIGQUIT) and the next cases get a fresh agent.
//   - TestAgentModern: the modern-only device (disable-legacy=on, 0x1043)
//     with uio: behaviourChecks (below), exact counters in list --json,
//     --bind auto choosing uio (list: "uio (no IOMMU group)", and the log),
//     a second agent on the same socket directory refused (exit 1) while
//     the first keeps working, SIGTERM, the function unbound again (it had
//     no driver before), and a second agent in the same boot finding the
//     same ports.
//   - TestAgentVFIOIOMMU: --bind vfio behind QEMU's emulated Intel IOMMU
//     (VFIO type1, modern device with ACCESS_PLATFORM, 2 MSI-X vectors):
//     bound to vfio-pci with every vector in /proc/interrupts,
//     behaviourChecks, list showing "vfio (IOMMU group N)" and exact
//     counters, SIGTERM giving the function back (no driver), --bind auto
//     choosing vfio (log and driver) and moving data, no IOMMU fault in
//     the kernel log, a stray DMA (the faultinject agent aims a descriptor
//     at an IOVA never mapped and at guest RAM) faulting in the IOMMU at
//     exactly those addresses with the ports working on, and the function
//     bindable again: the in-kernel virtio-pci takes it and moves data.
//   - TestAgentVFIONoIOMMU: the same cases in the no-IOMMU guest (vfio
//     no-IOMMU mode) on a transitional device (legacy transport, device
//     config at offset 24 under MSI-X) and on a modern one with vectors=4
//     (one vector per port); here --bind auto chooses uio (no IOMMU group)
//     and list shows the no-IOMMU group as a reason for uio.
//   - TestAgentPacked: a modern device with packed=on under uio, the agent
//     run with --ring packed: QEMU's x-query-virtio-status shows
//     VIRTIO_F_RING_PACKED among the guest features (checkRingPacked),
//     then behaviourChecks and a reset recovery (the faultinject agent's
//     zero-length descriptor, DEVICE_NEEDS_RESET, the ports back with 1 MiB
//     both ways byte-exact).
//   - TestAgentVFIOIOMMUPacked: TestAgentVFIOIOMMU's cases on a packed=on
//     device (--ring auto takes it), plus checkRingPacked.
//   - TestAgentHotplugPacked: TestAgentHotplug's cases on a packed=on
//     device, plus checkRingPacked.
//   - behaviourChecks, shared by the bindings' tests: socket names, data
//     both ways on two ports at once byte-exact (1 B to 8 MiB), a guest
//     client's open and close seen by the host (VSERPORT_CHANGE), and the
//     host away and back with no guest→host byte lost or duplicated.
//   - TestAgentSinglePort: max_ports=1 (no MULTIPORT): one virtconsole at
//     port 0, published as vport0p0, data both ways.
//   - TestAgentTwoDevices: two virtio-serial-pci functions driven by one
//     agent: device indexes in list and in unnamed sockets (vport1p2), data
//     on both devices at once.
//   - TestAgentConsole: a named virtconsole at port 0 (the host attached
//     to its chardev before the agent starts: QEMU drops console output
//     nobody is attached to) and a plain port. With --console-pty: the
//     emergency-write start line on the console, the NAME.pty symlink to
//     /dev/pts/N (none for the plain port), a guest program (ptyxfer)
//     opening it and exchanging 48 KiB each way byte-exact in raw mode,
//     the symlink gone after SIGTERM. With --console-exec of the helper's
//     minish: the host types commands (tty, size, uname -r, pid) and reads
//     their output through the cooked terminal, the program restarted
//     after it exits, a virtconsole hot-plugged, unplugged (program
//     stopped, symlink gone) and plugged again twice, a socket client
//     taking the console from the terminal and giving it back to the same
//     program, and the last gasp: the function unbound from
//     uio_pci_generic under the agent, the host reads "fatal: device ...
//     stopped" and "every device stopped" through emergency write, exit 1.
//   - TestAgentConsoleSinglePort: max_ports=1: the console of a device
//     without MULTIPORT gets a terminal (vport0p0.pty) and the program.
//   - TestAgentHotplug: a steady port and a port hot-plugged at nr=5, three
//     rounds of device_del while the hot port echoes megabytes both ways
//     and the steady port echoes 16 MiB across the unplug (the hot
//     client sees EOF or an error within 30 s, its socket goes, the
//     steady port finishes byte-exact, what came back on the hot port was
//     the pattern in order), device_del with both directions stuck (client
//     and host not reading), plugging the same nr and name again with data
//     byte-exact each time (2 and 8 MiB), device_del and device_add back
//     to back under a connected client, and an agent log with no error,
//     fault or violation.
//   - TestAgentHotplugModern: the same on the modern-only device with a hot
//     port without a name (re-plugged as vport0p5 each time).
//   - TestQemuGuestAgent: Debian's qemu-guest-agent, unmodified
//     (Options.QGA), listening on a guest Unix socket with vserial-agent
//     dialing it for org.qemu.guest_agent.0 (connect mode, config file); the
//     host (QGAClient) gets guest-sync-delimited and guest-sync echoing its
//     ids, guest-ping, guest-info listing the commands, a file written,
//     sought and read back with guest-file-* (and checked in the guest), a
//     guest file read, an error reply, and all of it again after qemu-ga
//     restarts (the agent redials; VSERPORT_CHANGE closed then open).
//   - TestAgentEvents: `vserial-agent events --json` followed while the
//     host connects and disconnects a chardev, a guest client connects, a
//     second one is rejected and the first leaves, and a port is
//     hot-plugged and unplugged over QMP: the snapshot, then every event
//     in order with its device, port, name, socket, peer pid, reasons and
//     timestamps, and agent_stopping with exit 0 when the agent stops;
//     `events --wait host-connected` returning when the host connects (and
//     at once when the snapshot shows it), the other --wait conditions as
//     the steps' barriers, and exit 1 with no agent.
//   - TestAgentRecovery: the faultinject build of the agent (BuildFaultAgent)
//     makes QEMU's modern device refuse a zero-length descriptor
//     (DEVICE_NEEDS_RESET); the agent resets the device without restarting:
//     ports keep their sockets, a connected guest client survives, the event
//     stream reports device_reset; 100 resets in a row leak no goroutine,
//     descriptor or mapping; 20 SIGTERM-and-restart cycles each find both
//     ports and leave hugepages, binding and socket directory as they were.
//   - TestDemo: what scripts/demo shows, step by step: a host program and a
//     guest program greeting each other and moving 4 MiB each way through
//     the agent's sockets.
//   - BenchmarkKernelDriver: MeasurePort on the in-kernel driver.
//   - BenchmarkKernelVsAgent: in one boot per binding (uio; VFIO type1 in
//     the IOMMU guest) and vCPU count (1, 2), interleaved ABBA rounds of
//     three arms on the same port: the in-kernel driver's /dev/vportNpM
//     (K), the in-kernel driver behind Debian's socat (S) and
//     vserial-agent's socket (A); median ratios with their min–max,
//     pooled round-trip percentiles, the relay floor, a calibration of
//     the guest, the agent's CPU, context switches, interrupts and
//     counters per MiB and per round trip, eight ports at once, a one-way
//     trickle and idle CPU. docs/benchmarks.md has the method and the
//     output explained; VSERIAL_BENCH_MIB, VSERIAL_BENCH_RTTS and
//     VSERIAL_BENCH_ROUNDS size it, VSERIAL_BENCH_REPORT names a file the
//     report is appended to.
//
// Run the benchmarks with -benchtime 1x: each call boots a guest, and a
// measurement is long enough on its own.
//
//	go test -run '^$' -bench . -benchtime 1x ./tests/qemu/
//
// # Environment
//
//   - VSERIAL_CACHE: cache directory for the kernel, its modules, vmlinux
//     and the u-root base image (default: the user cache dir + /vserial,
//     usually ~/.cache/vserial). Delete it to start from nothing; parallel
//     test processes share it safely (file locks).
//   - VSERIAL_QEMU_REQUIRED: when set (CI sets it), missing host tools make
//     the tests fail instead of skip, and the harness first runs
//     scripts/deps to install them (qemu-system-x86, kmod, xz-utils, zstd).
//     When unset, missing tools skip the test with a hint (root still tries
//     scripts/deps).
//   - VSERIAL_KEEP: keep each boot's directory (initramfs, console.log,
//     qemu.stderr, run.sh, sockets) instead of deleting it, and print where.
//
// # Reproducing a failing boot by hand
//
// A failing test logs the exact QEMU command line, the console and the
// commands it ran. Run it again with VSERIAL_KEEP=1, then start the same
// guest yourself:
//
//	VSERIAL_KEEP=1 go test -run TestKernelDriverBaseline -v ./tests/qemu/
//	/tmp/vsq-XXXX/run.sh
//
// The console is on your terminal (raw: what you type is not echoed). The
// helper also accepts plain lines and prints their output followed by
// "[exit N]", for example:
//
//	modprobe virtio_pci virtio_console
//	vports
//	cat /sys/class/virtio-ports/vport0p1/name
//	help
//	poweroff
//
// While it runs, the port sockets and qmp.sock in the same directory are
// live: `socat - UNIX-CONNECT:/tmp/vsq-XXXX/p1.sock` talks to a port, and
// `socat - UNIX-CONNECT:/tmp/vsq-XXXX/qmp.sock` to QMP (send
// {"execute":"qmp_capabilities"} first). Quit with poweroff (Ctrl-C goes to
// the guest), or send {"execute":"quit"} on QMP.
package qemu
