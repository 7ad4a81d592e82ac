package main

import "testing"

// Which ports get a device node: node= of the port's own line, else of the
// default line, else --nodes; never an ignored port.
func TestNodeWant(t *testing.T) {
	path := writeConfig(t, "port qga node=on\nport log node=off\nport junk mode=ignore node=on\nport plain socket-mode=0640\n")
	for _, tc := range []struct {
		args []string
		want map[string]bool // nil: no node anywhere
	}{
		{nil, nil},
		{[]string{"--config", path}, map[string]bool{"qga": true, "log": false, "junk": false, "plain": false, "other": false}},
		{[]string{"--config", path, "--nodes"}, map[string]bool{"qga": true, "log": false, "junk": false, "plain": true, "other": true}},
		{[]string{"--nodes", "--port", "vport0p3 node=off"}, map[string]bool{"vport0p3": false, "other": true}},
		{[]string{"--config", writeConfig(t, "default node=on\nport x node=off\n")}, map[string]bool{"x": false, "y": true}},
		{[]string{"--config", writeConfig(t, "default node=off\n"), "--nodes"}, map[string]bool{"y": false}},
	} {
		cfg, err := parseRun(tc.args, nil)
		if err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		want := nodeWant(cfg)
		if tc.want == nil {
			if want != nil {
				t.Errorf("%v: nodes wanted, want none", tc.args)
			}
			continue
		}
		if want == nil {
			t.Errorf("%v: no node wanted", tc.args)
			continue
		}
		for name, w := range tc.want {
			if got := want(name); got != w {
				t.Errorf("%v: node for %q = %v, want %v", tc.args, name, got, w)
			}
		}
	}
}
