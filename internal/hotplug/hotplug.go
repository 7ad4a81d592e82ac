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

// Events is the uevent source (*pciscan.Watcher).
type Events interface {
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
func Run(ctx context.Context, ev Events, cfg Config, o Owner) error {
	if cfg.Settle <= 0 {
		cfg.Settle = DefaultSettle
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	type next struct {
		ev  pciscan.Uevent
		err error
	}
	events := make(chan next)
	go func() {
		defer guard.Recover()
		for {
			e, err := ev.Next()
			select {
			case events <- next{e, err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	defer ev.Close()

	pending := map[string]time.Time{} // function → when to judge it
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	rearm := func() {
		var first time.Time
		for _, at := range pending {
			if first.IsZero() || at.Before(first) {
				first = at
			}
		}
		if !first.IsZero() {
			timer.Reset(time.Until(first))
		}
	}
	judge := func(addr string) {
		if o.Held(addr) {
			return
		}
		fn, err := pciscan.Lookup(cfg.Sysfs, addr)
		if err != nil {
			if !errors.Is(err, pciscan.ErrNoDevice) {
				log.Warn("hot-plug: cannot read the function", "pci", addr, "err", err)
			}
			return
		}
		if pciscan.IsConsole(fn) && o.Eligible(fn) {
			log.Info("hot-plug: adopting a new virtio-console function", "pci", addr, "driver", fn.Driver)
			o.Adopt(fn)
		}
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
			now := time.Now()
			for addr, at := range pending {
				if !at.After(now) {
					delete(pending, addr)
					judge(addr)
				}
			}
			rearm()
		case n := <-events:
			if n.err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return n.err
			}
			e := n.ev
			switch e.Action {
			case pciscan.ActionOverflow:
				log.Warn("hot-plug: uevents were lost; looking at every function again")
				all, err := pciscan.Scan(cfg.Sysfs)
				if err != nil {
					log.Warn("hot-plug: rescan", "err", err)
				}
				for _, fn := range all {
					if pciscan.IsConsole(fn) && !o.Held(fn.Addr) {
						pending[fn.Addr] = time.Now()
					}
				}
			case "remove":
				delete(pending, e.Addr)
				if o.Held(e.Addr) {
					o.Release(e.Addr, "function removed")
				}
			case "unbind":
				if o.Held(e.Addr) {
					o.Release(e.Addr, "function unbound from "+e.Driver+" by someone else")
					continue
				}
				pending[e.Addr] = time.Now().Add(cfg.Settle)
			case "add", "bind":
				if !o.Held(e.Addr) {
					pending[e.Addr] = time.Now().Add(cfg.Settle)
				}
			}
			rearm()
		}
	}
}
