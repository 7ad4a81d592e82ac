package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vserial/vserial/agent"
)

var fakeLookups = lookups{
	user: func(n string) (int, error) {
		if n == "daemon" {
			return 1, nil
		}
		return 0, errors.New("no such user")
	},
	group: func(n string) (int, error) {
		if n == "adm" {
			return 4, nil
		}
		return 0, errors.New("no such group")
	},
}

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "vserial.conf")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestConfigFile(t *testing.T) {
	path := writeConfig(t, `# vserial ports
default socket-mode=0600   # tighter than the flag

port org.qemu.guest_agent.0 mode=connect target=/run/qga.sock
port com.example.log socket=/run/log.sock owner=daemon group=adm socket-mode=0640
port "name with blanks" socket="odd name" owner=7 group=8
port vport0p3 mode=ignore
port console mode=pty
`)
	got, err := loadPortConfigs(path, []string{"com.example.log group=9", "extra mode=listen"}, []string{"unused"}, fakeLookups)
	if err != nil {
		t.Fatal(err)
	}
	if got.Default.SocketMode != 0o600 || got.Default.Mode != "" {
		t.Errorf("default = %+v", got.Default)
	}
	ptr := func(p *int) int {
		if p == nil {
			return -1
		}
		return *p
	}
	check := func(name string, want agent.PortConfig, owner, group int) {
		t.Helper()
		c, ok := got.Ports[name]
		if !ok {
			t.Fatalf("port %q missing: %+v", name, got.Ports)
		}
		if c.Mode != want.Mode || c.Socket != want.Socket || c.Target != want.Target || c.SocketMode != want.SocketMode || ptr(c.Owner) != owner || ptr(c.Group) != group {
			t.Errorf("port %q = %+v (owner %d group %d), want %+v (owner %d group %d)", name, c, ptr(c.Owner), ptr(c.Group), want, owner, group)
		}
	}
	check("org.qemu.guest_agent.0", agent.PortConfig{Mode: agent.ModeConnect, Target: "/run/qga.sock"}, -1, -1)
	// The flag overrides group and keeps the file's other keys.
	check("com.example.log", agent.PortConfig{Socket: "/run/log.sock", SocketMode: 0o640}, 1, 9)
	check("name with blanks", agent.PortConfig{Socket: "odd name"}, 7, 8)
	check("vport0p3", agent.PortConfig{Mode: agent.ModeIgnore}, -1, -1)
	check("console", agent.PortConfig{Mode: agent.ModePTY}, -1, -1)
	check("extra", agent.PortConfig{Mode: agent.ModeListen}, -1, -1)
	check("unused", agent.PortConfig{Mode: agent.ModeIgnore}, -1, -1)
	if len(got.Ports) != 7 {
		t.Errorf("%d ports configured, want 7: %+v", len(got.Ports), got.Ports)
	}
}

func TestConfigFileErrors(t *testing.T) {
	for _, tc := range []struct{ text, want string }{
		{"port a mode=listen\nbogus a\n", ":2: unknown keyword \"bogus\""},
		{"port\n", ":1: port needs a name"},
		{"port a colour=red\n", `:1: unknown key "colour"`},
		{"port a mode\n", `:1: "mode": want KEY=VALUE`},
		{"port a mode=serial\n", `:1: mode="serial": want listen, connect, pty or ignore`},
		{"port a mode=listen mode=ignore\n", ":1: mode set twice"},
		{"port a\nport a mode=ignore\n", `:2: port "a" already configured at `},
		{"default\n\ndefault mode=ignore\n", ":3: default already configured"},
		{"port a socket-mode=999\n", ":1: socket-mode \"999\": not an octal permission"},
		{"port a socket-mode=0060\n", ":1: socket-mode \"0060\": the owner needs at least 0600"},
		{"port a owner=nobody-here\n", ":1: owner=nobody-here: unknown user"},
		{"port a group=wheel2\n", ":1: group=wheel2: unknown group"},
		{"port a owner=-1\n", ":1: owner=-1: unknown user"},
		{"port a owner=12x\n", ":1: owner=12x: not a valid id"},
		{"port a target=\n", ":1: target=: empty path"},
		{"port \"a\n", ":1: column 6: unterminated quote"},
		{"port a#b\n", ":1: column 7: '#' inside a word"},
		{"port a=b mode=listen\n", `:1: port name "a=b" contains '='`},
		{"\n\nport a mode=connect\n", `:3: port "a": mode connect needs a target`},
		{"port a mode=connect target=rel.sock\n", `:1: port "a": target "rel.sock": must be an absolute path`},
		{"port a target=/t\n", `:1: port "a": target is only for mode connect`},
		{"port a mode=ignore socket=x\n", `:1: port "a": socket is only for modes listen and pty`},
		{"port a socket=../x\n", `:1: port "a": socket "../x"`},
		{"default mode=connect target=/t\n", ":1: default: mode connect needs one target per port"},
		{"port a node=yes\n", `:1: node="yes": want on or off`},
	} {
		path := writeConfig(t, tc.text)
		_, err := loadPortConfigs(path, nil, nil, fakeLookups)
		if err == nil {
			t.Errorf("%q: accepted, want error %q", tc.text, tc.want)
			continue
		}
		if !strings.HasPrefix(err.Error(), path+":") || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %q, want %q prefixed by the file name", tc.text, err, tc.want)
		}
	}
}

func TestConfigFlagErrors(t *testing.T) {
	for _, tc := range []struct {
		port, ignore []string
		want         string
	}{
		{port: []string{""}, want: "want NAME KEY=VALUE"},
		{port: []string{"a colour=red"}, want: `unknown key "colour"`},
		{port: []string{"a mode=connect"}, want: `--port: port "a": mode connect needs a target`},
		{ignore: []string{""}, want: "--ignore: empty port name"},
	} {
		_, err := loadPortConfigs("", tc.port, tc.ignore, fakeLookups)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("--port %q --ignore %q: %v, want %q", tc.port, tc.ignore, err, tc.want)
		}
	}
	if _, err := loadPortConfigs(filepath.Join(t.TempDir(), "missing"), nil, nil, fakeLookups); err == nil || !strings.Contains(err.Error(), "--config") {
		t.Errorf("missing file: %v", err)
	}
	if _, err := loadPortConfigs(t.TempDir(), nil, nil, fakeLookups); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("directory as config: %v", err)
	}
}

func TestParseRunConfigFlags(t *testing.T) {
	path := writeConfig(t, "port qga mode=connect target=/run/qga.sock\n")
	cfg, err := parseRun([]string{"--config", path, "--ignore", "junk", "--port", "log socket-mode=0640"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Agent.Ports["qga"].Target != "/run/qga.sock" || cfg.Agent.Ports["junk"].Mode != agent.ModeIgnore || cfg.Agent.Ports["log"].SocketMode != 0o640 {
		t.Errorf("ports = %+v", cfg.Agent.Ports)
	}
	bad := writeConfig(t, "port qga mode=connect\n")
	_, err = parseRun([]string{"--config", bad}, nil)
	var ue *usageError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), bad+":1:") {
		t.Errorf("bad config: %v, want a usage error with file:line", err)
	}
}
