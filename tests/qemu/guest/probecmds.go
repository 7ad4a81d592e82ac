package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vserial/vserial/tests/qemu/internal/wire"
	"golang.org/x/sys/unix"
)

// The semantics probe: "probe-serve PATH SOCK" holds a port's device file
// open across steps and answers one step per connection on the Unix socket
// SOCK; "probe SOCK OP ARGS..." sends one step and prints what it saw as a
// wire.ProbeResult (JSON). Each step is one guest command, so the host can
// change the port's host side (connect, send, disconnect) between steps.
// Every system call is made directly (no Go runtime poller, which would
// turn the descriptor non-blocking behind the probe's back).
//
// Steps (OP ARGS):
//
//	open [nonblock]       open(PATH, O_RDWR), and an epoll instance watching it
//	open2                 a second open(PATH, O_RDWR|O_NONBLOCK) while the first is held
//	open-other PATH       open(PATH, O_RDWR|O_NONBLOCK) and close it (e.g. a console port)
//	nonblock on|off       fcntl(F_SETFL) O_NONBLOCK
//	read N                read(fd, N bytes)
//	write STRING          write(fd, STRING)
//	fill CHUNK LIMIT SECS SEED
//	                      write wire.Pattern(SEED) in CHUNK-byte writes until an error,
//	                      LIMIT bytes or SECS seconds; Bytes is how many went
//	poll [WANT MASK MS]   poll(2) once; with WANT, again until revents&MASK == WANT
//	                      or MS milliseconds passed (Settled says which)
//	epoll                 epoll_wait(0) on the instance made at open
//	fsync                 fsync(fd)
//	ioctl TCGETS|FIONREAD ioctl(fd, ...)
//	lseek                 lseek(fd, 0, SEEK_CUR)
//	fstat                 the file type fstat reports
//	close                 close(fd) and the epoll instance
//	quit                  stop probe-serve
type prober struct {
	path string
	mu   sync.Mutex
	fd   int
	ep   int
	quit chan struct{}
}

// probeEvents are the events poll and epoll are asked for: everything a
// port can report as ready.
const probeEvents = unix.POLLIN | unix.POLLPRI | unix.POLLOUT | unix.EPOLLRDNORM | unix.EPOLLWRNORM | unix.POLLRDHUP

// eventNames are poll's and epoll's bits (the same values) in bit order.
var eventNames = []struct {
	bit  uint32
	name string
}{
	{unix.POLLIN, "IN"}, {unix.POLLPRI, "PRI"}, {unix.POLLOUT, "OUT"}, {unix.POLLERR, "ERR"},
	{unix.POLLHUP, "HUP"}, {unix.POLLNVAL, "NVAL"}, {unix.EPOLLRDNORM, "RDNORM"}, {unix.EPOLLRDBAND, "RDBAND"},
	{unix.EPOLLWRNORM, "WRNORM"}, {unix.EPOLLWRBAND, "WRBAND"}, {unix.POLLRDHUP, "RDHUP"},
}

func eventList(ev uint32) []string {
	var names []string
	for _, e := range eventNames {
		if ev&e.bit != 0 {
			names = append(names, e.name)
		}
	}
	if len(names) == 0 {
		return []string{"0"}
	}
	return names
}

// parseEvents reads "IN|OUT" (or "0") as event bits.
func parseEvents(s string) (uint32, error) {
	var ev uint32
	for _, n := range strings.Split(s, "|") {
		if n == "0" {
			continue
		}
		found := false
		for _, e := range eventNames {
			if e.name == n {
				ev |= e.bit
				found = true
			}
		}
		if !found {
			return 0, fmt.Errorf("unknown event %q", n)
		}
	}
	return ev, nil
}

func probeServe(args []string) error {
	if len(args) != 2 {
		return errors.New("usage: probe-serve PATH SOCK")
	}
	_ = os.Remove(args[1])
	l, err := net.Listen("unix", args[1])
	if err != nil {
		return err
	}
	defer l.Close()
	p := &prober{path: args[0], fd: -1, ep: -1, quit: make(chan struct{})}
	go func() {
		<-p.quit
		l.Close()
	}()
	for {
		c, err := l.Accept()
		if err != nil {
			select {
			case <-p.quit:
				return nil
			default:
				return err
			}
		}
		go p.serveConn(c)
	}
}

func (p *prober) serveConn(c net.Conn) {
	defer c.Close()
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return
	}
	var argv []string
	r := wire.ProbeResult{Ret: -1}
	if err := json.Unmarshal([]byte(line), &argv); err != nil || len(argv) == 0 {
		r.Errno = "bad request"
	} else {
		r.Op = argv[0]
		t0 := time.Now()
		r = p.step(argv)
		r.Op = argv[0]
		r.Millis = time.Since(t0).Milliseconds()
	}
	b, _ := json.Marshal(r)
	_, _ = c.Write(append(b, '\n'))
}

// probeResult is a system call's outcome as a ProbeResult.
func probeResult(ret int, err error) wire.ProbeResult {
	if err != nil {
		var en unix.Errno
		if errors.As(err, &en) {
			return wire.ProbeResult{Ret: -1, Errno: unix.ErrnoName(en)}
		}
		return wire.ProbeResult{Ret: -1, Errno: err.Error()}
	}
	return wire.ProbeResult{Ret: int64(ret)}
}

func (p *prober) held() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.fd
}

func (p *prober) step(argv []string) wire.ProbeResult {
	fd := p.held()
	op, args := argv[0], argv[1:]
	switch {
	case op == "open":
		return p.open(len(args) == 1 && args[0] == "nonblock")
	case op == "open2":
		return openClose(p.path)
	case op == "open-other" && len(args) == 1:
		return openClose(args[0])
	case op == "quit":
		close(p.quit)
		return wire.ProbeResult{}
	case op == "close":
		return p.close()
	case fd < 0:
		return wire.ProbeResult{Ret: -1, Errno: "not open"}
	}
	return p.fdStep(fd, op, args)
}

// fdStep runs the steps on the held descriptor.
func (p *prober) fdStep(fd int, op string, args []string) wire.ProbeResult {
	switch {
	case op == "nonblock" && len(args) == 1:
		fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
		if err == nil {
			if args[0] == "on" {
				fl |= unix.O_NONBLOCK
			} else {
				fl &^= unix.O_NONBLOCK
			}
			_, err = unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl)
		}
		return probeResult(0, err)
	case op == "read" && len(args) == 1:
		n, err := strconv.Atoi(args[0])
		if err != nil || n <= 0 {
			return wire.ProbeResult{Ret: -1, Errno: "bad count"}
		}
		buf := make([]byte, n)
		k, err := unix.Read(fd, buf)
		r := probeResult(k, err)
		if k > 0 {
			r.Data = string(buf[:k])
		}
		return r
	case op == "write" && len(args) == 1:
		return probeResult(unix.Write(fd, []byte(args[0])))
	case op == "fill" && len(args) == 4:
		return fill(fd, args)
	case op == "poll":
		return pollStep(fd, args)
	case op == "epoll":
		return p.epoll()
	case op == "fsync":
		return probeResult(0, unix.Fsync(fd))
	case op == "ioctl" && len(args) == 1 && args[0] == "TCGETS":
		_, err := unix.IoctlGetTermios(fd, unix.TCGETS)
		return probeResult(0, err)
	case op == "ioctl" && len(args) == 1 && args[0] == "FIONREAD":
		return probeResult(unix.IoctlGetInt(fd, unix.TIOCINQ)) // the value of FIONREAD
	case op == "lseek":
		off, err := unix.Seek(fd, 0, io.SeekCurrent)
		return probeResult(int(off), err)
	case op == "fstat":
		var st unix.Stat_t
		err := unix.Fstat(fd, &st)
		r := probeResult(0, err)
		if err == nil {
			r.Type = fileType(st.Mode)
		}
		return r
	}
	return wire.ProbeResult{Ret: -1, Errno: "unknown step " + strconv.Quote(op)}
}

func (p *prober) open(nonblock bool) wire.ProbeResult {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fd >= 0 {
		return wire.ProbeResult{Ret: -1, Errno: "already open"}
	}
	flags := unix.O_RDWR | unix.O_CLOEXEC
	if nonblock {
		flags |= unix.O_NONBLOCK
	}
	fd, err := unix.Open(p.path, flags, 0)
	if err != nil {
		return probeResult(fd, err)
	}
	p.fd = fd
	if p.ep, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err == nil {
		err = unix.EpollCtl(p.ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: probeEvents, Fd: int32(fd)})
	}
	if err != nil {
		r := probeResult(-1, err)
		r.Errno = "epoll: " + r.Errno
		return r
	}
	return wire.ProbeResult{Ret: 0} // the descriptor's number is not compared
}

func (p *prober) close() wire.ProbeResult {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fd < 0 {
		return wire.ProbeResult{Ret: -1, Errno: "not open"}
	}
	if p.ep >= 0 {
		unix.Close(p.ep)
	}
	err := unix.Close(p.fd)
	p.fd, p.ep = -1, -1
	return probeResult(0, err)
}

func openClose(path string) wire.ProbeResult {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return probeResult(fd, err)
	}
	unix.Close(fd)
	return wire.ProbeResult{Ret: 0}
}

func (p *prober) epoll() wire.ProbeResult {
	p.mu.Lock()
	ep := p.ep
	p.mu.Unlock()
	evs := make([]unix.EpollEvent, 4)
	n, err := unix.EpollWait(ep, evs, 0)
	r := probeResult(n, err)
	if err == nil {
		var ev uint32
		for _, e := range evs[:n] {
			ev |= e.Events
		}
		r.Events = eventList(ev)
	}
	return r
}

// pollStep polls once, or with WANT MASK MS until the wanted state.
func pollStep(fd int, args []string) wire.ProbeResult {
	var want, mask uint32
	var wait time.Duration
	if len(args) == 3 {
		var err1, err2 error
		want, err1 = parseEvents(args[0])
		mask, err2 = parseEvents(args[1])
		ms, err3 := strconv.Atoi(args[2])
		if err := errors.Join(err1, err2, err3); err != nil {
			return wire.ProbeResult{Ret: -1, Errno: err.Error()}
		}
		wait = time.Duration(ms) * time.Millisecond
	} else if len(args) != 0 {
		return wire.ProbeResult{Ret: -1, Errno: "usage: poll [WANT MASK MS]"}
	}
	deadline := time.Now().Add(wait)
	for {
		pfd := []unix.PollFd{{Fd: int32(fd), Events: probeEvents}}
		n, err := unix.Poll(pfd, 0)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return probeResult(n, err)
		}
		ev := uint32(uint16(pfd[0].Revents))
		settled := ev&mask == want
		if len(args) == 0 || settled || time.Now().After(deadline) {
			r := probeResult(n, nil)
			r.Events = eventList(ev)
			if len(args) != 0 {
				r.Settled = &settled
			}
			return r
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// fill writes the pattern until the port pushes back; Ret and Errno are
// the last write's, Bytes the total written.
func fill(fd int, args []string) wire.ProbeResult {
	chunk, err1 := strconv.Atoi(args[0])
	limit, err2 := strconv.ParseInt(args[1], 10, 64)
	secs, err3 := strconv.ParseFloat(args[2], 64)
	seed, err4 := strconv.ParseUint(args[3], 10, 64)
	if err := errors.Join(err1, err2, err3, err4); err != nil || chunk <= 0 {
		return wire.ProbeResult{Ret: -1, Errno: "usage: fill CHUNK LIMIT SECS SEED"}
	}
	pat := wire.Pattern(seed)
	buf := make([]byte, chunk)
	var total int64
	pending := 0 // bytes of buf not yet written
	deadline := time.Now().Add(time.Duration(secs * float64(time.Second)))
	for total < limit && time.Now().Before(deadline) {
		if pending == 0 {
			pending = int(min(int64(chunk), limit-total))
			_, _ = pat.Read(buf[:pending])
		}
		k, err := unix.Write(fd, buf[:pending])
		if k > 0 {
			total += int64(k)
			copy(buf, buf[k:pending])
			pending -= k
		}
		if err != nil {
			r := probeResult(k, err)
			r.Bytes = total
			return r
		}
	}
	return wire.ProbeResult{Ret: 0, Bytes: total}
}

func fileType(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFCHR:
		return "chr"
	case unix.S_IFIFO:
		return "fifo"
	case unix.S_IFSOCK:
		return "sock"
	case unix.S_IFREG:
		return "reg"
	}
	return fmt.Sprintf("%#o", mode&unix.S_IFMT)
}

// probe sends one step to probe-serve and prints the ProbeResult line.
func probe(args []string) error {
	if len(args) < 2 {
		return errors.New("usage: probe SOCK OP [ARGS...]")
	}
	c, err := net.Dial("unix", args[0])
	if err != nil {
		return err
	}
	defer c.Close()
	req, _ := json.Marshal(args[1:])
	if _, err := c.Write(append(req, '\n')); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return fmt.Errorf("no answer from probe-serve: %w", err)
	}
	_, err = io.WriteString(stdout, line)
	return err
}
