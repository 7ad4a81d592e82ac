package guard

import (
	"strings"
	"sync/atomic"
	"testing"
)

// The handler sees the value and the panicking goroutine's stack, and the
// panic goes on afterwards.
func TestRecoverHandsOverAndPanicsAgain(t *testing.T) {
	var calls atomic.Int32
	var got any
	var stack string
	SetHandler(func(v any, s []byte) { calls.Add(1); got, stack = v, string(s) })
	defer SetHandler(nil)
	repanicked := make(chan any, 1)
	go func() {
		defer func() { repanicked <- recover() }()
		defer Recover()
		boom()
	}()
	if v := <-repanicked; v != "boom" {
		t.Fatalf("after Recover the goroutine panicked with %v, want the same value again", v)
	}
	if calls.Load() != 1 || got != "boom" {
		t.Fatalf("handler called %d times with %v", calls.Load(), got)
	}
	if !strings.Contains(stack, "guard.boom") {
		t.Errorf("stack does not show where the panic happened:\n%s", stack)
	}
}

//go:noinline
func boom() { panic("boom") }

// No panic: Recover does nothing and the handler is not called.
func TestRecoverWithoutPanic(t *testing.T) {
	var calls atomic.Int32
	SetHandler(func(any, []byte) { calls.Add(1) })
	defer SetHandler(nil)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer Recover()
	}()
	<-done
	if calls.Load() != 0 {
		t.Fatal("handler called without a panic")
	}
}
