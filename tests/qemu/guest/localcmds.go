package main

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Built-ins for the tests of the agent's control socket under local abuse:
// another user's clients, many of them.

// floodFiles is the descriptor limit the flooding side raises itself to
// (as root, before it drops to the user): the kernel's default of 4096 is
// below what ctlflood holds.
const floodFiles = 1 << 16

// dropTo raises the descriptor limit, then becomes uid (and gid uid) in
// every thread. It must run as root.
func dropTo(uid int) error {
	lim := unix.Rlimit{Cur: floodFiles, Max: floodFiles}
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("raise RLIMIT_NOFILE to %d: %w", floodFiles, err)
	}
	if err := syscall.Setgroups(nil); err != nil {
		return fmt.Errorf("setgroups: %w", err)
	}
	if err := syscall.Setgid(uid); err != nil {
		return fmt.Errorf("setgid %d: %w", uid, err)
	}
	if err := syscall.Setuid(uid); err != nil {
		return fmt.Errorf("setuid %d: %w", uid, err)
	}
	return nil
}

// asUID runs ARGV as user UID (group UID, no supplementary groups) and
// passes its output and exit status on.
func asUID(args []string) error {
	if len(args) < 2 {
		return errors.New("usage: as-uid UID ARGV [ARGS]")
	}
	uid, err := strconv.ParseUint(args[0], 10, 31)
	if err != nil {
		return fmt.Errorf("uid %q: %w", args[0], err)
	}
	cmd := command(args[1:])
	cmd.Stdout, cmd.Stderr = stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
	err = cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		os.Exit(exitCode(err))
	}
	return err
}

// ctlflood takes, as user UID, every event-stream slot one user may hold
// on the agent's control socket at DIR/.control (SUBS subscribers that
// read their snapshot and then nothing), checks that one more is refused,
// then opens IDLE connections that send nothing. It creates READYFILE
// (its directory is made writable for UID first) and holds everything for
// SECONDS, then prints the answer to the extra subscriber, the first
// dial error if any, and a last line of key=value: subscribed,
// extra_refused, idle_open (connections that connected), idle_errors,
// idle_open_ms, refused (idle connections the agent answered with its
// "too many" line).
func ctlflood(args []string) error {
	const usage = "usage: ctlflood UID DIR IDLE SUBS READYFILE SECONDS"
	if len(args) != 6 {
		return errors.New(usage)
	}
	uid, err1 := strconv.Atoi(args[0])
	idle, err2 := strconv.Atoi(args[2])
	subs, err3 := strconv.Atoi(args[3])
	secs, err4 := strconv.ParseFloat(args[5], 64)
	if err := errors.Join(err1, err2, err3, err4); err != nil || uid <= 0 || idle < 0 || subs < 0 {
		return fmt.Errorf("%s: %v", usage, err)
	}
	ctl, ready := filepath.Join(args[1], ".control"), args[4]
	if err := os.MkdirAll(filepath.Dir(ready), 0o777); err != nil {
		return err
	}
	if err := os.Chmod(filepath.Dir(ready), 0o777); err != nil {
		return err
	}
	if err := dropTo(uid); err != nil {
		return err
	}

	subscribe := func() (net.Conn, string, error) {
		c, err := net.Dial("unix", ctl)
		if err != nil {
			return nil, "", err
		}
		c.SetDeadline(time.Now().Add(60 * time.Second))
		if _, err := c.Write([]byte(`{"op":"events"}` + "\n")); err != nil {
			c.Close()
			return nil, "", err
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		c.SetDeadline(time.Time{})
		return c, strings.TrimSpace(line), err
	}
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for i := range subs {
		c, line, err := subscribe()
		if err != nil {
			return fmt.Errorf("subscriber %d: %w", i+1, err)
		}
		held = append(held, c)
		if !strings.HasPrefix(line, `{"event":"snapshot"`) {
			return fmt.Errorf("subscriber %d: first line %.200q, want the snapshot", i+1, line)
		}
	}
	extraConn, extra, err := subscribe()
	if err != nil {
		extra = "error: " + err.Error()
	} else {
		extraConn.Close()
	}

	var idleConns []*net.UnixConn
	idleErrs := 0
	firstErr := ""
	t0 := time.Now()
	for range idle {
		c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: ctl, Net: "unix"})
		if err != nil {
			if idleErrs == 0 {
				firstErr = err.Error()
			}
			idleErrs++
			continue
		}
		idleConns = append(idleConns, c)
	}
	took := time.Since(t0)
	if err := touch([]string{ready}); err != nil {
		return err
	}
	time.Sleep(time.Duration(secs * float64(time.Second)))

	refused := 0
	for _, c := range idleConns {
		c.SetReadDeadline(time.Now().Add(time.Millisecond))
		b := make([]byte, 256)
		if n, _ := c.Read(b); strings.Contains(string(b[:n]), "too many control connections") {
			refused++
		}
		c.Close()
	}
	// Details first; the key=value line last (the test parses that one).
	fmt.Fprintf(stdout, "extra subscriber: %s\n", extra)
	if firstErr != "" {
		fmt.Fprintf(stdout, "first idle error: %s\n", firstErr)
	}
	fmt.Fprintf(stdout, "subscribed=%d extra_refused=%t idle_open=%d idle_errors=%d idle_open_ms=%d refused=%d\n",
		subs, strings.Contains(extra, "too many event subscribers"), len(idleConns), idleErrs, took.Milliseconds(), refused)
	return nil
}
