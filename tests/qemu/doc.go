// Package qemu boots real Linux guests under QEMU (TCG, no KVM needed) and
// checks vserial — and the in-kernel virtio_console driver it is compared
// with — from the host side, through the ports' chardev sockets and QMP.
// It is test support: nothing outside tests imports it. docs/testing.md
// says what a boot is made of, what each test in this directory checks, and
// how to reproduce a failing boot by hand.
//
// # What it promises a test
//
//   - Boot(t, Options) returns a Guest whose helper (tests/qemu/guest, the
//     initramfs's uinit) answers commands over the serial console (protocol
//     in internal/wire): Guest.Run and Guest.Start run its built-ins or any
//     program in the guest. The guest runs a Debian kernel with its modules
//     (GuestModules), a u-root initramfs and Options.Files; QEMU has a
//     virtio-serial-pci device (id vs0) with one chardev socket per
//     Options.Ports entry, and QMP.
//   - Everything it downloads (the kernel, qemu-guest-agent, socat, the
//     u-root base image, a rebuilt no-IOMMU vfio.ko) is unpacked into the
//     cache (EnvCache, default ~/.cache/vserial), never installed, and safe
//     to share between test processes (file locks).
//   - At most two guests run at once in a test process: Boot waits for a
//     slot, since each keeps a host core busy under TCG. QEMU dies with the
//     test process (Pdeathsig), and is killed when the test ends.
//   - A failing test logs the exact QEMU command line, the console and the
//     commands it ran; with VSERIAL_KEEP the boot's directory (run.sh,
//     sockets, logs) is kept for a rerun by hand.
//   - A missing host tool skips the test with a hint, or fails it when
//     VSERIAL_QEMU_REQUIRED is set (CI sets it; the harness then runs
//     scripts/deps first).
//
// # What it never does
//
//   - Touch the host's devices, kernel or packages: guests are QEMU
//     processes, downloads stay in the cache.
//   - Assert a behaviour on its own: the helpers move and check bytes, and
//     each Test function names the rule it pins (docs/sockets.md).
//
// Boot once per QEMU command line and run many cases in that boot: a boot
// to the helper takes about 2 s. Run the benchmarks with -benchtime 1x
// (each call boots a guest; docs/benchmarks.md has the method):
//
//	go test -run '^$' -bench . -benchtime 1x ./tests/qemu/
package qemu
