// Package pump is vserial's data plane: one event loop per device that
// owns the device's rings (through driver's poll face, driver/poll*.go) and
// every client descriptor attached to its ports, and moves bytes straight
// between them.
//
// Its caller is cmd/vserial-agent: New takes a driver.Device opened with
// Config.ExternalLoop, and the agent hands each client's descriptor to the
// loop through agent.FDServer. How the loop works, with its counters, is
// in docs/data-plane.md.
//
// # Contract
//
//   - One goroutine per device, sleeping only on one epoll set (in
//     epoll_wait, or parked in Go's poller on the set's descriptor: see
//     below) over the interrupt descriptors (/dev/uioN, or each MSI-X
//     eventfd), a command eventfd and the attached client descriptors, all
//     edge-triggered.
//     Client descriptors never enter Go's poller; readiness is kept as flags
//     and cleared by a short read or write, so no call is made only to hear
//     EAGAIN.
//   - Host→guest: every received buffer goes to the client in one writev; a
//     short write keeps the rest in the device's buffers (backpressure
//     reaches the host through QEMU's can_read). Guest→host: one readv into
//     every free transmit buffer, one publish, at most one kick. Both run
//     under the driver's lock with non-blocking raw system calls, so no
//     buffer is ever used outside it. Nothing on this path allocates.
//   - Interrupts follow NAPI: data interrupts are off while the loop has
//     work (Device.Disarm on every wake); before sleeping it re-arms them
//     and looks again (Device.Arm), and only sleeps when nothing arrived in
//     between. With INTx the line stays masked from the interrupt until
//     that Arm. Control-plane changes (host connected, port removed,
//     resets) wake it through the device's waker.
//   - Streams move as many bytes per process switch as they can: the
//     loop's thread runs SCHED_BATCH while a port streams (batch.go), each
//     bulk host→guest writev runs SCHED_FIFO so the client cannot preempt
//     it per skb, and host→guest streams go in batches of 256 KiB with the
//     receive interrupt delayed until then (rxbatch.go).
//   - Go's scheduler never sees the loop in a system call on its path:
//     kicks, the ISR read, the INTx unmask and policy switches are raw
//     (internal/rawio), and so are its waits while a stream runs batched
//     (at most 5 ms each). Otherwise, on one P (GOMAXPROCS 1) the loop
//     parks in Go's poller between events and goes through the scheduler
//     at least every 5 ms when it does not, so that the runtime's sysmon
//     sleeps and never preempts it; on several Ps it is locked to its
//     thread and waits raw while traffic moves (not while an in-process
//     endpoint is attached: its goroutines need the P a raw wait keeps),
//     and with an ordinary epoll_wait otherwise (wait.go).
//   - After a small send (below 32 KiB) the loop may spin on the port's
//     receive queue for the reply, within the client's budget (Poll:
//     adaptive, off or fixed; see PollAdaptive). It never spins without a
//     send just made, so an idle loop costs no CPU. On more than one CPU
//     it also polls its epoll set after a small reply, for the client's
//     next request (clientpoll.go).
//   - A client descriptor is in the epoll set for EPOLLIN and EPOLLRDHUP,
//     and for EPOLLOUT only while the loop holds bytes the client's buffer
//     did not take (client.go, watchSpace): a Unix socket signals its
//     writer each time the reader takes bytes, and every reply the client
//     read would otherwise wake the loop for nothing.
//   - Serve attaches a descriptor and blocks until the client is done; the
//     semantics (host gating, hang-up while the host is away, EOF flushed
//     before the end, one client per port, device resets reported as
//     driver.ErrDeviceReset) are the socket semantics of docs/sockets.md.
//     The loop never closes a client's descriptor.
//   - Attach holds a port in-process (inproc.go): an Endpoint is a client
//     with no descriptor, whose Read and Write run in the caller's
//     goroutine with Serve's semantics; how it shares the port with the
//     loop without losing a wake-up is told at the top of inproc.go.
//
// Counters and PortCounters say why a number moved: passes, sleeps,
// wake-ups by interrupt and by command, spins, system calls by kind, and the
// driver's interrupts, kicks and unmasks.
package pump
