// Package rawio makes the data plane's hot system calls as raw system calls
// that allocate nothing: readv(2), writev(2) and read(2) on a socket, the
// 8-byte eventfd read and write, pread(2) and pwrite(2) of a register or
// configuration-space file (a kick, the legacy ISR, the INTx unmask, used
// by packages uio and vfio), sched_setattr(2) of the calling thread, and
// epoll_pwait(2) with a bound.
//
// Why raw: the data plane copies up to a few hundred KiB per call on
// descriptors that are non-blocking (the Go poller's, or the pump's own
// epoll set), so the calls never sleep; but under emulation they take far
// longer than the 20 µs after which the runtime's sysmon hands the caller's
// P to another thread (runtime.retake), and on a one-CPU guest every
// transfer then pays for thread hand-offs. A raw system call skips the
// scheduler's syscall bookkeeping: the P stays with the goroutine for the
// copy, as for any other CPU work. The loop goroutine never yields while a
// stream lasts, so sysmon takes it for a goroutine running for more than
// 10 ms, and then retakes its P in any ordinary system call at once and
// goes back to polling every 20 µs; on one vCPU each of those wake-ups
// preempts the client. Never use these on a descriptor that can block,
// except EpollWait with a short bound (a signal ends it with EINTR).
//
// Errors come back as the unix.Errno itself (0 for none), so that callers on
// the hot path can branch on EAGAIN and EINTR without an interface
// allocation. The package holds no state and imports nothing of vserial.
package rawio
