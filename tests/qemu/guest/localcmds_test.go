package main

import (
	"strings"
	"testing"
)

func TestLocalBuiltinsCheckArguments(t *testing.T) {
	for _, c := range []struct {
		run  func([]string) error
		args []string
		want string
	}{
		{asUID, []string{"1000"}, "usage: as-uid"},
		{asUID, []string{"-1", "true"}, `uid "-1"`},
		{ctlflood, []string{"1000", "/run/vserial", "10", "16", "/tmp/r"}, "usage: ctlflood"},
		{ctlflood, []string{"0", "/run/vserial", "10", "16", "/tmp/r", "1"}, "usage: ctlflood"},
		{ctlflood, []string{"1000", "/run/vserial", "many", "16", "/tmp/r", "1"}, "usage: ctlflood"},
	} {
		err := c.run(c.args)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want an error with %q", c.args, err, c.want)
		}
	}
}
