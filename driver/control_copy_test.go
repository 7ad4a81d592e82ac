package driver

import (
	"bytes"
	"testing"
)

// TestControlMessageCopiedBeforeValidation: a device that rewrites a
// PORT_NAME in its buffer after the driver looked (a '/' into an accepted
// name) must not get the rewritten name through: the driver validates and
// uses one private copy.
func TestControlMessageCopiedBeforeValidation(t *testing.T) {
	rewrites := 0
	testHookControlCopied = func(b []byte) {
		if i := bytes.Index(b, []byte("good.name")); i >= 0 {
			copy(b[i:], "evil/name")
			rewrites++
		}
	}
	t.Cleanup(func() { testHookControlCopied = nil })
	r := newRig(t, rigOpts{})
	if err := r.m.Plug(1, "good.name", false); err != nil {
		t.Fatal(err)
	}
	p := r.port(1, "")
	r.until("port named", func() bool { return p.Name() != "" })
	if got := p.Name(); got != "good.name" {
		t.Fatalf("port name %q: the driver used device memory after the check", got)
	}
	if rewrites == 0 {
		t.Fatal("the hook never saw the PORT_NAME: the test proves nothing")
	}
	if v := r.d.Stats().Violations; v != 0 {
		t.Errorf("%d violations for a valid name", v)
	}
}
