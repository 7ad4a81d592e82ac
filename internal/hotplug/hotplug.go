// Package hotplug decides, from the kernel's uevents, which virtio-console
// functions a running agent adopts and which it lets go (run
// --wait-devices): a function that appears and that no kernel driver
// holds (or one the operator named) is adopted; a function the agent
// holds that is removed, or unbound by someone else, is released at once,
// so its ports go and, under VFIO, the kernel's removal can complete.
//
// It owns no device: the Owner it is given opens and closes them. It
// never polls sysfs; it reads sysfs only for the function an event names
// (or for every function after the uevent socket overflowed).
package hotplug

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/vserial/vserial/internal/guard"
	"github.com/vserial/vserial/pciscan"
)

// Uevents is the source of the kernel's uevents (*pciscan.Watcher).
type Uevents interface {
	Next() (pciscan.Uevent, error)
	Close() error
}

// Owner is the agent's side.
type Owner interface {
	// Held reports whether the agent drives the function at addr.
	Held(addr string) bool
	// Eligible reports whether fn may be adopted: the same rule as at
	// start (a virtio-console function no kernel driver holds, or one
	// named with --device). A function the agent gave up on (its device
	// failed) must not be eligible again until it is removed, or each
	// give-back (an unbind event) would adopt it once more.
	Eligible(fn pciscan.Function) bool
	// Adopt brings fn up and publishes its ports.
	Adopt(fn pciscan.Function)
	// Release stops the function at addr, which is going away (why says
	// how), and gives it up.
	Release(addr, why string)
	// Gone says the function at addr was removed from the system (after
	// Release if it was held): a function plugged at that address later
	// is a new one.
	Gone(addr string)
}

// DefaultSettle is how long a new function is left to the kernel's own
// drivers before it is judged: the "add" uevent is sent before the
// kernel probes drivers for the function.
const DefaultSettle = 300 * time.Millisecond

// Config configures Run.
type Config struct {
	Sysfs  string
	Settle time.Duration // 0: DefaultSettle
	Log    *slog.Logger
}

// Run follows ev until ctx ends (it then closes ev) or ev fails.
func Run(ctx context.Context, ev Uevents, cfg Config, o Owner) error {
	if cfg.Settle <= 0 {
		cfg.Settle = DefaultSettle
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	events := make(chan next)
	go read(ctx, ev, events)
	defer ev.Close()
	w := &watch{cfg: cfg, o: o, pending: map[string]time.Time{}, timer: time.NewTimer(time.Hour)}
	w.timer.Stop()
	defer w.timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-w.timer.C:
			w.due()
		case n := <-events:
			if n.err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return n.err
			}
			w.handle(n.ev)
		}
		w.rearm()
	}
}

// next is one result of Uevents.Next.
type next struct {
	ev  pciscan.Uevent
	err error
}

// read passes ev's events on until one fails or ctx ends.
func read(ctx context.Context, ev Uevents, out chan<- next) {
	defer guard.Recover()
	for {
		e, err := ev.Next()
		select {
		case out <- next{e, err}:
		case <-ctx.Done():
			return
		}
		if err != nil {
			return
		}
	}
}

// watch is Run's state: the functions waiting to be judged.
type watch struct {
	cfg     Config
	o       Owner
	pending map[string]time.Time // function → when to judge it
	timer   *time.Timer
}

// handle acts on one uevent.
func (w *watch) handle(e pciscan.Uevent) {
	switch e.Action {
	case pciscan.ActionOverflow:
		w.cfg.Log.Warn("hot-plug: uevents were lost; looking at every function again")
		all, err := pciscan.Scan(w.cfg.Sysfs)
		if err != nil {
			w.cfg.Log.Warn("hot-plug: rescan", "err", err)
		}
		for _, fn := range all {
			if pciscan.IsConsole(fn) && !w.o.Held(fn.Addr) {
				w.pending[fn.Addr] = time.Now()
			}
		}
	case "remove":
		delete(w.pending, e.Addr)
		if w.o.Held(e.Addr) {
			w.o.Release(e.Addr, "function removed")
		}
		w.o.Gone(e.Addr)
	case "unbind":
		if w.o.Held(e.Addr) {
			// The kernel unbinds a function before it removes it, so
			// this is an unplug as often as someone else's doing.
			drv := e.Driver
			if drv == "" {
				drv = "its driver"
			}
			w.o.Release(e.Addr, "function unbound from "+drv+" (unplugged, or taken by someone else)")
			return
		}
		w.pending[e.Addr] = time.Now().Add(w.cfg.Settle)
	case "add", "bind":
		if !w.o.Held(e.Addr) {
			w.pending[e.Addr] = time.Now().Add(w.cfg.Settle)
		}
	}
}

// due judges every function whose settle time has passed.
func (w *watch) due() {
	now := time.Now()
	for addr, at := range w.pending {
		if !at.After(now) {
			delete(w.pending, addr)
			w.judge(addr)
		}
	}
}

// rearm sets the timer for the next function to judge.
func (w *watch) rearm() {
	var first time.Time
	for _, at := range w.pending {
		if first.IsZero() || at.Before(first) {
			first = at
		}
	}
	if !first.IsZero() {
		w.timer.Reset(time.Until(first))
	}
}

// judge adopts the function at addr if it is an eligible console.
func (w *watch) judge(addr string) {
	if w.o.Held(addr) {
		return
	}
	fn, err := pciscan.Lookup(w.cfg.Sysfs, addr)
	if err != nil {
		if !errors.Is(err, pciscan.ErrNoDevice) {
			w.cfg.Log.Warn("hot-plug: cannot read the function", "pci", addr, "err", err)
		}
		return
	}
	if pciscan.IsConsole(fn) && w.o.Eligible(fn) {
		w.cfg.Log.Info("hot-plug: adopting a new virtio-console function", "pci", addr, "driver", fn.Driver)
		w.o.Adopt(fn)
	}
}
