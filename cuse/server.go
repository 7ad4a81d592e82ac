package cuse

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/vserial/vserial/internal/guard"
)

// Path is where Linux's CUSE channel lives.
const Path = "/dev/cuse"

// Defaults of Config.
const (
	DefaultMaxRead     = 128 << 10
	DefaultMaxWrite    = 128 << 10
	DefaultMaxInflight = 64
)

// Config describes the device a Server registers.
type Config struct {
	// Name is the device's name: the kernel makes /dev/NAME (DEVNAME=).
	Name string
	// Major and Minor are the device number; Major 0 lets the kernel
	// choose (Minor is then the first minor it tries).
	Major, Minor uint32
	// MaxRead and MaxWrite bound one request's data (the kernel splits
	// larger syscalls); 0: the defaults. At least 4096.
	MaxRead, MaxWrite int
	// MaxInflight bounds the reads and writes served at once (0: the
	// default); past it a request is answered EAGAIN.
	MaxInflight int
	Logger      *slog.Logger
}

// Handler answers the requests on the device. Poll, Ioctl, Flush and Fsync
// run on the server's reader and must not block; Open, Release, Read and
// Write run in a goroutine each and may block: Read, Write and Open until
// ctx ends (INTERRUPT, or Close), Release briefly (close(2) waits for it).
// An Errno of 0 is success.
type Handler interface {
	Open(ctx context.Context, r Request) (fh uint64, err syscall.Errno)
	Release(r Request)
	// Read fills b (len: what the caller asked for, at most MaxRead) and
	// returns how many bytes it filled.
	Read(ctx context.Context, r Request, b []byte) (int, syscall.Errno)
	// Write takes b and returns how many bytes it took.
	Write(ctx context.Context, r Request, b []byte) (int, syscall.Errno)
	// Poll returns the events that are ready (POLLIN...). With schedule,
	// the kernel waits for NotifyPoll(kh) when none it wants (events) is.
	Poll(r Request, kh uint64, schedule bool, events uint32) uint32
	Ioctl(r Request, cmd uint32) syscall.Errno
	Fsync(r Request) syscall.Errno
	Flush(r Request) syscall.Errno
}

// Server serves one CUSE device.
type Server struct {
	f   *os.File
	h   Handler
	cfg Config
	log *slog.Logger

	ready    chan struct{} // closed once the kernel took the device
	sem      chan struct{}
	bufs     sync.Pool
	wg       sync.WaitGroup
	mu       sync.Mutex
	inflight map[uint64]context.CancelFunc
	ctx      context.Context
	cancel   context.CancelFunc
	closing  atomic.Bool
	once     sync.Once

	// Counters.
	Bad         atomic.Uint64 // malformed requests
	Unsupported atomic.Uint64 // requests answered ENOSYS
	Interrupts  atomic.Uint64 // INTERRUPTs that cancelled a request
	Refused     atomic.Uint64 // reads and writes refused past MaxInflight
}

// Open opens the CUSE channel at path (Path) and returns a server for the
// device cfg describes; Serve registers it.
func Open(path string, cfg Config, h Handler) (*Server, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("cuse: %w", err)
	}
	return NewServer(f, cfg, h)
}

// NewServer serves the device on an already open channel f (a test gives
// a fake one). The server owns f from then on.
func NewServer(f *os.File, cfg Config, h Handler) (*Server, error) {
	if cfg.Name == "" {
		f.Close()
		return nil, errors.New("cuse: a device needs a name")
	}
	if cfg.MaxRead == 0 {
		cfg.MaxRead = DefaultMaxRead
	}
	if cfg.MaxWrite == 0 {
		cfg.MaxWrite = DefaultMaxWrite
	}
	cfg.MaxRead, cfg.MaxWrite = max(cfg.MaxRead, 4096), max(cfg.MaxWrite, 4096)
	if cfg.MaxInflight <= 0 {
		cfg.MaxInflight = DefaultMaxInflight
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		f: f, h: h, cfg: cfg, log: cfg.Logger.With("cuse", cfg.Name),
		ready:    make(chan struct{}),
		sem:      make(chan struct{}, cfg.MaxInflight),
		inflight: make(map[uint64]context.CancelFunc),
	}
	// One buffer holds a whole request: the largest is a write.
	size := inHeaderLen + writeInLen + max(cfg.MaxWrite, cfg.MaxRead) + 4096
	s.bufs.New = func() any { b := make([]byte, size); return &b }
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s, nil
}

// Ready is closed once the server answered CUSE_INIT: the device then exists (devtmpfs makes its node shortly).
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Name is the device's name.
func (s *Server) Name() string { return s.cfg.Name }

// Serve answers CUSE_INIT, then every request, until Close (nil) or the
// channel fails.
func (s *Server) Serve() error {
	defer s.wg.Wait()
	bp := s.bufs.Get().(*[]byte)
	for {
		n, err := s.f.Read(*bp)
		if err != nil {
			if s.closing.Load() || errors.Is(err, os.ErrClosed) {
				return nil
			}
			if errors.Is(err, syscall.EINTR) || errors.Is(err, syscall.EAGAIN) {
				continue
			}
			if errors.Is(err, syscall.ENODEV) || errors.Is(err, io.EOF) {
				// The kernel tore the connection down (abort).
				return fmt.Errorf("cuse: %s: channel closed by the kernel: %w", s.cfg.Name, err)
			}
			return fmt.Errorf("cuse: %s: read request: %w", s.cfg.Name, err)
		}
		if s.handle((*bp)[:n], bp) {
			bp = s.bufs.Get().(*[]byte) // the request kept it
		}
	}
}

// handle answers one request; it reports whether a goroutine took the
// buffer bp (msg lies in it).
func (s *Server) handle(msg []byte, bp *[]byte) bool {
	h, args, err := parseHeader(msg)
	if err != nil {
		s.Bad.Add(1)
		s.log.Debug("malformed request", "err", err, "len", len(msg))
		if len(msg) >= inHeaderLen {
			s.reply(h.Unique, -int32(syscall.EINVAL), nil)
		}
		return false
	}
	r := Request{Unique: h.Unique, PID: h.PID, UID: h.UID, GID: h.GID}
	switch h.Opcode {
	case opCUSEInit:
		s.init(h, args)
	case opOpen:
		s.open(r, args)
	case opRelease:
		s.release(r, args)
	case opRead, opWrite:
		return s.startIO(h.Opcode, r, args, bp)
	case opInterrupt:
		s.interrupt(args)
	case opPoll:
		s.poll(r, args)
	case opIoctl:
		s.ioctl(r, args)
	case opFlush, opFsync:
		s.sync(h.Opcode, r, args)
	default:
		s.Unsupported.Add(1)
		s.replyErr(h.Unique, syscall.ENOSYS)
	}
	return false
}

// bad answers a request whose arguments are too short.
func (s *Server) bad(unique uint64, op string) {
	s.Bad.Add(1)
	s.log.Debug("malformed request", "op", op)
	s.replyErr(unique, syscall.EINVAL)
}

func (s *Server) init(h inHeader, args []byte) {
	if len(args) < initInLen {
		s.bad(h.Unique, "cuse_init")
		return
	}
	major, minor := le.Uint32(args[0:]), le.Uint32(args[4:])
	if major != kernelMajor || minor < minMinor {
		s.log.Error("kernel speaks an unknown FUSE version", "major", major, "minor", minor)
		s.replyErr(h.Unique, syscall.EPROTO)
		return
	}
	out := initOut(min(minor, ourMinor), &s.cfg)
	if len(out)-initOutLen > initInfoMax {
		s.replyErr(h.Unique, syscall.ENAMETOOLONG)
		return
	}
	if s.reply(h.Unique, 0, out) == nil {
		select {
		case <-s.ready:
		default:
			close(s.ready)
		}
	}
}

func (s *Server) open(r Request, args []byte) {
	if len(args) < openInLen {
		s.bad(r.Unique, "open")
		return
	}
	r.Flags = le.Uint32(args[0:])
	s.spawn(r.Unique, func(ctx context.Context) {
		fh, e := s.h.Open(ctx, r)
		if e != 0 {
			s.replyErr(r.Unique, e)
			return
		}
		b := make([]byte, outHeaderLen+openOutLen)
		le.PutUint64(b[outHeaderLen:], fh)
		s.send(b, 0, r.Unique)
	})
}

func (s *Server) release(r Request, args []byte) {
	if len(args) < releaseInLen {
		s.bad(r.Unique, "release")
		return
	}
	r.FH, r.Flags = le.Uint64(args[0:]), le.Uint32(args[8:])
	// A release is never refused: it runs even past MaxInflight.
	s.wg.Add(1)
	go func() {
		defer guard.Recover()
		defer s.wg.Done()
		s.h.Release(r)
		s.reply(r.Unique, 0, nil)
	}()
}

func (s *Server) poll(r Request, args []byte) {
	if len(args) < pollInLen {
		s.bad(r.Unique, "poll")
		return
	}
	r.FH = le.Uint64(args[0:])
	kh, flags, events := le.Uint64(args[8:]), le.Uint32(args[16:]), le.Uint32(args[20:])
	if events == 0 {
		events = ^uint32(0) // before 7.21 the field was padding: every event
	}
	rev := s.h.Poll(r, kh, flags&pollScheduled != 0, events)
	b := make([]byte, outHeaderLen+pollOutLen)
	le.PutUint32(b[outHeaderLen:], rev)
	s.send(b, 0, r.Unique)
}

func (s *Server) ioctl(r Request, args []byte) {
	if len(args) < ioctlInLen {
		s.bad(r.Unique, "ioctl")
		return
	}
	r.FH = le.Uint64(args[0:])
	if e := s.h.Ioctl(r, le.Uint32(args[12:])); e != 0 {
		s.replyErr(r.Unique, e)
		return
	}
	s.reply(r.Unique, 0, make([]byte, ioctlOutLen))
}

func (s *Server) sync(op uint32, r Request, args []byte) {
	if len(args) < 8 {
		s.bad(r.Unique, "flush/fsync")
		return
	}
	r.FH = le.Uint64(args[0:])
	var e syscall.Errno
	if op == opFlush {
		e = s.h.Flush(r)
	} else {
		e = s.h.Fsync(r)
	}
	s.replyErr(r.Unique, e)
}

// replyErr answers a request with an error (0: success, no data).
func (s *Server) replyErr(unique uint64, e syscall.Errno) {
	s.reply(unique, -int32(e), nil)
}

// reply writes the answer to a request: the header and data in one write.
func (s *Server) reply(unique uint64, errno int32, data []byte) error {
	b := make([]byte, outHeaderLen+len(data))
	copy(b[outHeaderLen:], data)
	return s.send(b, errno, unique)
}

// send fills in the header at the start of b and writes b. A request the
// kernel gave up on (ENOENT) is not an error.
func (s *Server) send(b []byte, errno int32, unique uint64) error {
	if unique != 0 {
		// Answered: an INTERRUPT from now on finds nothing to cancel.
		s.mu.Lock()
		delete(s.inflight, unique)
		s.mu.Unlock()
	}
	putOutHeader(b, len(b), errno, unique)
	_, err := s.f.Write(b)
	if err != nil && !errors.Is(err, syscall.ENOENT) && !s.closing.Load() {
		s.log.Debug("reply not taken", "unique", unique, "err", err)
	}
	return err
}

// NotifyPoll wakes the poll that was given kh (FUSE_NOTIFY_POLL): the
// kernel then polls the file again.
func (s *Server) NotifyPoll(kh uint64) error {
	b := make([]byte, outHeaderLen+8)
	le.PutUint64(b[outHeaderLen:], kh)
	return s.send(b, notifyPoll, 0)
}

// Close closes the channel (the kernel removes the device), ends every
// read and write in progress and waits for them. Serve then returns nil.
func (s *Server) Close() error {
	var err error
	s.once.Do(func() {
		s.closing.Store(true)
		s.cancel()
		err = s.f.Close()
	})
	s.wg.Wait()
	return err
}

// startIO starts a read or write in a goroutine of its own; it reports
// whether that goroutine took bp.
func (s *Server) startIO(op uint32, r Request, args []byte, bp *[]byte) bool {
	if len(args) < readInLen {
		s.bad(r.Unique, "read/write")
		return false
	}
	r.FH, r.Offset = le.Uint64(args[0:]), le.Uint64(args[8:])
	size := int(le.Uint32(args[16:]))
	r.Flags = le.Uint32(args[32:])
	var data []byte
	if op == opWrite {
		data = args[writeInLen:]
		if size > len(data) || size > s.cfg.MaxWrite {
			s.bad(r.Unique, "write")
			return false
		}
		data = data[:size]
	} else if size > s.cfg.MaxRead {
		s.bad(r.Unique, "read")
		return false
	}
	return s.spawn(r.Unique, func(ctx context.Context) {
		defer s.bufs.Put(bp)
		if op == opWrite {
			s.write(ctx, r, data)
		} else {
			s.read(ctx, r, size)
		}
	})
}

// spawn runs fn in a goroutine of its own with a context that INTERRUPT
// and Close cancel, unless MaxInflight requests run already (then the
// request is answered EAGAIN); it reports whether fn runs.
func (s *Server) spawn(unique uint64, fn func(ctx context.Context)) bool {
	select {
	case s.sem <- struct{}{}:
	default:
		s.Refused.Add(1)
		s.replyErr(unique, syscall.EAGAIN)
		return false
	}
	ctx, cancel := context.WithCancel(s.ctx)
	s.mu.Lock()
	s.inflight[unique] = cancel
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer guard.Recover()
		defer s.wg.Done()
		fn(ctx)
		s.mu.Lock()
		delete(s.inflight, unique)
		s.mu.Unlock()
		cancel()
		<-s.sem
	}()
	return true
}

func (s *Server) read(ctx context.Context, r Request, size int) {
	bp := s.bufs.Get().(*[]byte)
	defer s.bufs.Put(bp)
	b := (*bp)[:outHeaderLen+size]
	n, e := s.h.Read(ctx, r, b[outHeaderLen:])
	if e != 0 {
		s.replyErr(r.Unique, e)
		return
	}
	s.send(b[:outHeaderLen+min(max(n, 0), size)], 0, r.Unique)
}

func (s *Server) write(ctx context.Context, r Request, data []byte) {
	n, e := s.h.Write(ctx, r, data)
	if e != 0 {
		s.replyErr(r.Unique, e)
		return
	}
	b := make([]byte, outHeaderLen+writeOutLen)
	le.PutUint32(b[outHeaderLen:], uint32(min(max(n, 0), len(data))))
	s.send(b, 0, r.Unique)
}

// interrupt cancels the request an INTERRUPT names. One already answered
// is not found, and the INTERRUPT is dropped.
func (s *Server) interrupt(args []byte) {
	if len(args) < interruptLen {
		s.Bad.Add(1)
		return
	}
	u := le.Uint64(args[0:])
	s.mu.Lock()
	cancel := s.inflight[u]
	s.mu.Unlock()
	if cancel != nil {
		s.Interrupts.Add(1)
		cancel()
	}
}
