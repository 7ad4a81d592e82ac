package main

// Per-port configuration: the --config file and the --port, --ignore
// flags. The format is described in docs/configuration.md.
//
//	# comment
//	default mode=ignore
//	port org.qemu.guest_agent.0 mode=connect target=/run/qga.sock
//	port com.example.log socket=/run/log.sock owner=daemon group=adm socket-mode=0640
//
// A line is a keyword (default or port), a port name for port, then
// KEY=VALUE settings separated by blanks. A name or value holding blanks,
// '#' or '"' is written as a Go string literal ("a b"). --port takes what
// follows "port" on a line; its settings override the file's, key by key.

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"strconv"
	"strings"

	"github.com/vserial/vserial/agent"
)

// maxConfigSize bounds the config file read.
const maxConfigSize = 1 << 20

// setting is one KEY=VALUE, already checked, that can be applied to a
// PortConfig.
type setting struct {
	key   string
	apply func(*agent.PortConfig)
}

// configEntry is one default or port line (or --port flag).
type configEntry struct {
	where    string // file:line or --port/--ignore
	name     string // "" for default
	settings []setting
}

// portConfigs is the outcome: the default and the per-name entries.
type portConfigs struct {
	Default agent.PortConfig
	Ports   map[string]agent.PortConfig
}

// lookups resolves user and group names; tests replace it.
type lookups struct {
	user  func(string) (int, error)
	group func(string) (int, error)
}

var systemLookups = lookups{
	user: func(name string) (int, error) {
		u, err := user.Lookup(name)
		if err != nil {
			return 0, err
		}
		return strconv.Atoi(u.Uid)
	},
	group: func(name string) (int, error) {
		g, err := user.LookupGroup(name)
		if err != nil {
			return 0, err
		}
		return strconv.Atoi(g.Gid)
	},
}

// loadPortConfigs reads the config file (if path is not empty), applies
// the --port and --ignore flags over it and checks the result.
func loadPortConfigs(path string, portFlags, ignoreFlags []string, lk lookups) (portConfigs, error) {
	var entries []configEntry
	if path != "" {
		f, err := os.Open(path)
		if err != nil {
			return portConfigs{}, fmt.Errorf("--config: %w", err)
		}
		defer f.Close()
		fi, err := f.Stat()
		if err != nil {
			return portConfigs{}, fmt.Errorf("--config: %w", err)
		}
		if !fi.Mode().IsRegular() {
			return portConfigs{}, fmt.Errorf("--config %s: not a regular file (%v)", path, fi.Mode().Type())
		}
		entries, err = parseConfig(path, io.LimitReader(f, maxConfigSize+1), lk)
		if err != nil {
			return portConfigs{}, err
		}
	}
	for _, v := range portFlags {
		toks, err := tokenize(v)
		if err != nil {
			return portConfigs{}, fmt.Errorf("--port %q: %v", v, err)
		}
		if len(toks) == 0 {
			return portConfigs{}, fmt.Errorf("--port %q: want NAME KEY=VALUE [KEY=VALUE]", v)
		}
		e, err := parseEntry("--port", toks[0], toks[1:], lk)
		if err != nil {
			return portConfigs{}, fmt.Errorf("--port %q: %v", v, err)
		}
		entries = append(entries, e)
	}
	for _, name := range ignoreFlags {
		if name == "" {
			return portConfigs{}, errors.New("--ignore: empty port name")
		}
		entries = append(entries, configEntry{where: "--ignore", name: name, settings: []setting{{
			key: "mode", apply: func(c *agent.PortConfig) { c.Mode = agent.ModeIgnore },
		}}})
	}
	return mergeEntries(entries)
}

// mergeEntries applies the entries in order (the file's, then the flags')
// and checks every resulting configuration.
func mergeEntries(entries []configEntry) (portConfigs, error) {
	out := portConfigs{Ports: map[string]agent.PortConfig{}}
	where := map[string]string{} // name → where it was last set
	for _, e := range entries {
		c := out.Default
		if e.name != "" {
			c = out.Ports[e.name]
		}
		for _, s := range e.settings {
			s.apply(&c)
		}
		if e.name == "" {
			out.Default = c
		} else {
			out.Ports[e.name] = c
		}
		where[e.name] = e.where
	}
	if err := out.Default.Check(); err != nil {
		return portConfigs{}, fmt.Errorf("%s: default: %v", where[""], err)
	}
	if out.Default.Mode == agent.ModeConnect {
		return portConfigs{}, fmt.Errorf("%s: default: mode connect needs one target per port; configure it on port lines", where[""])
	}
	for name, c := range out.Ports {
		if err := c.Check(); err != nil {
			return portConfigs{}, fmt.Errorf("%s: port %q: %v", where[name], name, err)
		}
	}
	return out, nil
}

// parseConfig parses a config file. Every error names file:line.
func parseConfig(path string, r io.Reader, lk lookups) ([]configEntry, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 64*1024)
	var out []configEntry
	seen := map[string]string{} // "default" or "port NAME" → where
	size, n := 0, 0
	for sc.Scan() {
		n++
		size += len(sc.Bytes()) + 1
		if size > maxConfigSize {
			return nil, fmt.Errorf("%s: larger than %d bytes", path, maxConfigSize)
		}
		where := fmt.Sprintf("%s:%d", path, n)
		line := sc.Text()
		toks, err := tokenize(line)
		if err != nil {
			return nil, fmt.Errorf("%s: %v", where, err)
		}
		if len(toks) == 0 {
			continue
		}
		var e configEntry
		switch toks[0] {
		case "default":
			e, err = parseEntry(where, "", toks[1:], lk)
		case "port":
			if len(toks) < 2 {
				return nil, fmt.Errorf("%s: port needs a name (port NAME KEY=VALUE)", where)
			}
			e, err = parseEntry(where, toks[1], toks[2:], lk)
		default:
			return nil, fmt.Errorf("%s: unknown keyword %q: lines start with default or port", where, toks[0])
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %v", where, err)
		}
		key := "default"
		if e.name != "" {
			key = "port " + strconv.Quote(e.name)
		}
		if prev, dup := seen[key]; dup {
			return nil, fmt.Errorf("%s: %s already configured at %s", where, key, prev)
		}
		seen[key] = where
		out = append(out, e)
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return nil, fmt.Errorf("%s:%d: line too long", path, n+1)
		}
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return out, nil
}

// parseEntry checks a port name (or "" for the default) and its settings.
func parseEntry(where, name string, kvs []string, lk lookups) (configEntry, error) {
	e := configEntry{where: where, name: name}
	if strings.ContainsFunc(name, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return e, fmt.Errorf("port name %q contains a control character", name)
	}
	if strings.Contains(name, "=") && where != "" {
		return e, fmt.Errorf("port name %q contains '=' (forgot the name before the settings?)", name)
	}
	seen := map[string]bool{}
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return e, fmt.Errorf("%q: want KEY=VALUE", kv)
		}
		if seen[k] {
			return e, fmt.Errorf("%s set twice", k)
		}
		seen[k] = true
		s, err := parseSetting(k, v, lk)
		if err != nil {
			return e, err
		}
		e.settings = append(e.settings, s)
	}
	return e, nil
}

// configKeys lists the keys, for error messages.
const configKeys = "mode, socket, target, owner, group, socket-mode, node"

func parseSetting(k, v string, lk lookups) (setting, error) {
	s := setting{key: k}
	switch k {
	case "mode":
		m := agent.Mode(v)
		if v == "" || !m.Valid() {
			return s, fmt.Errorf("mode=%q: want listen, connect, pty or ignore", v)
		}
		s.apply = func(c *agent.PortConfig) { c.Mode = m }
	case "socket":
		if v == "" {
			return s, errors.New("socket=: empty path")
		}
		s.apply = func(c *agent.PortConfig) { c.Socket = v }
	case "target":
		if v == "" {
			return s, errors.New("target=: empty path")
		}
		s.apply = func(c *agent.PortConfig) { c.Target = v }
	case "owner", "group":
		id, err := parseID(k, v, lk)
		if err != nil {
			return s, err
		}
		if k == "owner" {
			s.apply = func(c *agent.PortConfig) { c.Owner = &id }
		} else {
			s.apply = func(c *agent.PortConfig) { c.Group = &id }
		}
	case "socket-mode":
		m, err := parseMode("", "socket-mode", v, 0o600, agent.DefaultSocketMode)
		if err != nil {
			return s, err
		}
		s.apply = func(c *agent.PortConfig) { c.SocketMode = m }
	case "node":
		var on bool
		switch v {
		case "on":
			on = true
		case "off":
		default:
			return s, fmt.Errorf("node=%q: want on or off", v)
		}
		s.apply = func(c *agent.PortConfig) { c.Node = &on }
	default:
		return s, fmt.Errorf("unknown key %q (keys: %s)", k, configKeys)
	}
	return s, nil
}

// parseID takes a numeric id or a user/group name.
func parseID(k, v string, lk lookups) (int, error) {
	if v == "" {
		return 0, fmt.Errorf("%s=: empty", k)
	}
	if n, err := strconv.ParseUint(v, 10, 31); err == nil {
		return int(n), nil
	} else if v[0] >= '0' && v[0] <= '9' {
		return 0, fmt.Errorf("%s=%s: not a valid id", k, v)
	}
	look := lk.user
	if k == "group" {
		look = lk.group
	}
	id, err := look(v)
	if err != nil {
		return 0, fmt.Errorf("%s=%s: unknown %s (%v)", k, v, map[string]string{"owner": "user", "group": "group"}[k], err)
	}
	return id, nil
}

// tokenize splits a line into blank-separated words, dropping a comment
// that starts with '#' outside quotes. A word may contain Go string
// literals ("...") which are unquoted: name="a b" is the word name=a b.
func tokenize(line string) ([]string, error) {
	var out []string
	i := 0
	for {
		for i < len(line) && (line[i] == ' ' || line[i] == '\t' || line[i] == '\r') {
			i++
		}
		if i == len(line) || line[i] == '#' {
			return out, nil
		}
		var w strings.Builder
		for i < len(line) && line[i] != ' ' && line[i] != '\t' && line[i] != '\r' {
			c := line[i]
			switch c {
			case '"':
				j := i + 1
				for j < len(line) && line[j] != '"' {
					if line[j] == '\\' {
						j++
					}
					j++
				}
				if j >= len(line) {
					return nil, fmt.Errorf("column %d: unterminated quote", i+1)
				}
				u, err := strconv.Unquote(line[i : j+1])
				if err != nil {
					return nil, fmt.Errorf("column %d: bad quoted string %s: %v", i+1, line[i:j+1], err)
				}
				w.WriteString(u)
				i = j + 1
			case '#':
				return nil, fmt.Errorf("column %d: '#' inside a word (quote it, or put a blank before a comment)", i+1)
			default:
				if c < 0x20 || c == 0x7f {
					return nil, fmt.Errorf("column %d: control character %#02x", i+1, c)
				}
				w.WriteByte(c)
				i++
			}
		}
		out = append(out, w.String())
	}
}
