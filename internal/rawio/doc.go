// Package rawio makes the data plane's few hot system calls — readv(2),
// writev(2), read(2) on a socket, and the 8-byte eventfd read and write —
// as raw system calls that allocate nothing.
//
// Why raw: the data plane copies up to a few hundred KiB per call on
// descriptors that are non-blocking (the Go poller's, or the pump's own
// epoll set), so the calls never sleep; but under emulation they take far
// longer than the 20 µs after which the runtime's sysmon hands the caller's
// P to another thread (runtime.retake), and on a one-CPU guest every
// transfer then pays for thread hand-offs. A raw system call skips the
// scheduler's syscall bookkeeping: the P stays with the goroutine for the
// copy, as for any other CPU work. Never use these on a descriptor that can
// block.
//
// Errors come back as the unix.Errno itself (0 for none), so that callers on
// the hot path can branch on EAGAIN and EINTR without an interface
// allocation. The package holds no state and imports nothing of vserial.
package rawio
