// Package cuse serves a character device from userspace through Linux's
// CUSE (/dev/cuse, fs/fuse/cuse.c): the kernel creates /dev/DEVNAME and
// turns every open, read, write, poll, ioctl and release on it into a
// FUSE request this package reads from the channel and answers.
//
// It is written here because no Go library speaks CUSE: hanwen/go-fuse and
// bazil.org/fuse mount file systems and know neither CUSE_INIT nor the
// character-device flow.
//
// # Protocol, as this package speaks it
//
//   - Open (Open) opens the channel, Serve answers the kernel's CUSE_INIT
//     (opcode 4096) with FUSE 7.x, the limits of Config and DEVNAME (and a
//     device number: 0 lets the kernel choose), after which the kernel
//     registers the device and devtmpfs makes /dev/DEVNAME.
//   - POLL, IOCTL, FLUSH and FSYNC are answered by the reader itself (the
//     Handler must not block in them). OPEN, READ, WRITE and RELEASE run
//     each in a goroutine of its own, so a read that waits for data never
//     stalls the channel; at most Config.MaxInflight opens, reads and
//     writes run at once (past that a request gets EAGAIN; a release is
//     never refused), each read with a buffer of at most Config.MaxRead
//     bytes.
//   - INTERRUPT (a signal reached the process blocked in read or write)
//     cancels the context of the request it names; the Handler returns and
//     the request is answered EINTR.
//   - A POLL asking for a notification keeps its poll handle; the Handler
//     calls Server.NotifyPoll with it when readiness changes (the kernel
//     then polls again).
//   - Every other opcode is answered ENOSYS. A request shorter than its
//     header or its arguments is answered EINVAL (or dropped when even its
//     header is short) and counted; it never panics the server.
//   - Close closes the channel: the kernel removes the device, and every
//     request still waiting ends (their replies are dropped).
//
// One syscall may become several requests: the kernel splits a read or
// write larger than MaxRead or MaxWrite, and numbers the pieces with a
// growing offset. Request.Offset > 0 marks such a continuation, which a
// Handler should not block in (returning 0 ends the syscall with what the
// earlier pieces moved).
package cuse
