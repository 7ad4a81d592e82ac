// Package guard gives every goroutine vserial starts the same last words.
//
// A panic in a goroutine kills the process before any deferred function
// of another goroutine runs, so the agent's own recover in run sees only
// its own goroutine's panics. Every goroutine the production packages
// start therefore defers Recover first (layering_test.go checks each go
// statement). Recover hands the panic to the process's Handler once —
// the agent logs it with the stack and writes its last gasp through the
// device's emergency channel — and then panics again with the same value,
// so the process still dies as Go makes it die (exit status 2, the
// goroutine's trace on stderr). Without a Handler, Recover only re-panics.
//
// Recover never resumes a goroutine: after a panic the locks it held and
// the state it was changing cannot be trusted.
package guard

import (
	"runtime/debug"
	"sync"
	"sync/atomic"
)

// Handler gets the panic value and the panicking goroutine's stack. It
// runs at most once per process; a second panic meanwhile waits for it.
type Handler func(v any, stack []byte)

var (
	handler atomic.Pointer[Handler]
	once    sync.Once
)

// SetHandler installs h (nil: none) for every later panic.
func SetHandler(h Handler) {
	if h == nil {
		handler.Store(nil)
		return
	}
	handler.Store(&h)
}

// Recover must be deferred directly, as the first statement of a
// goroutine's function: defer guard.Recover().
func Recover() {
	v := recover()
	if v == nil {
		return
	}
	if h := handler.Load(); h != nil {
		stack := debug.Stack()
		once.Do(func() { (*h)(v, stack) })
	}
	panic(v)
}
