package supervisor

import (
	"testing"

	"github.com/vserial/vserial/agent"
)

func TestNodeWant(t *testing.T) {
	on, off := true, false
	if NodeWant(false, map[string]agent.PortConfig{"a": {}}, agent.PortConfig{}) != nil {
		t.Fatal("no --nodes and no node=on: want nil (no CUSE at all)")
	}
	ports := map[string]agent.PortConfig{
		"quiet": {Node: &off},
		"loud":  {Node: &on},
		"gone":  {Mode: agent.ModeIgnore, Node: &on},
		"plain": {},
	}
	for _, c := range []struct {
		all  bool
		def  agent.PortConfig
		name string
		want bool
	}{
		{true, agent.PortConfig{}, "quiet", false},
		{true, agent.PortConfig{}, "plain", true},
		{true, agent.PortConfig{}, "other", true},
		{true, agent.PortConfig{}, "gone", false},
		{false, agent.PortConfig{}, "loud", true},
		{false, agent.PortConfig{}, "plain", false},
		{false, agent.PortConfig{Node: &on}, "plain", true},
		{false, agent.PortConfig{Node: &on}, "other", true},
		{true, agent.PortConfig{Node: &off}, "other", false},
		{true, agent.PortConfig{Node: &off}, "loud", true},
	} {
		w := NodeWant(c.all, ports, c.def)
		if w == nil {
			t.Fatalf("NodeWant(%v, ..., %+v) = nil", c.all, c.def)
		}
		if got := w(c.name); got != c.want {
			t.Errorf("all=%v def.Node=%v: %s gets a node: %v, want %v", c.all, c.def.Node != nil && *c.def.Node, c.name, got, c.want)
		}
	}
}
