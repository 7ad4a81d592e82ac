package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Built-ins for the per-port configuration tests: a program listening for
// a connect-mode port, and a look at a socket file's mode and owner.

// listenGreet listens on PATH and serves COUNT connections one after the
// other: on each it writes "hello I\n", reads one line, prints it as
// read=LINE and closes the connection. A connect-mode port of the agent
// dials it, and redials after each close.
func listenGreet(args []string) error {
	if len(args) != 2 {
		return errors.New("usage: listen-greet PATH COUNT")
	}
	count, err := strconv.Atoi(args[1])
	if err != nil || count < 1 {
		return fmt.Errorf("COUNT %q: want a positive number", args[1])
	}
	ln, err := net.Listen("unix", args[0])
	if err != nil {
		return err
	}
	defer ln.Close()
	for i := 1; i <= count; i++ {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		if _, err := fmt.Fprintf(c, "hello %d\n", i); err != nil {
			c.Close()
			return fmt.Errorf("connection %d: %w", i, err)
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if err != nil && !(errors.Is(err, io.EOF) && line != "") {
			return fmt.Errorf("connection %d: reading a line: %w (got %q)", i, err, line)
		}
		fmt.Fprintf(stdout, "read=%s\n", strconv.Quote(strings.TrimSuffix(line, "\n")))
	}
	return nil
}

// statFile prints a file's type, permission bits and owner:
// type=socket perm=0600 uid=0 gid=0.
func statFile(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: stat PATH")
	}
	fi, err := os.Lstat(args[0])
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return errors.New("no owner information")
	}
	typ := "file"
	switch fi.Mode().Type() {
	case fs.ModeSocket:
		typ = "socket"
	case fs.ModeDir:
		typ = "dir"
	case fs.ModeSymlink:
		typ = "symlink"
	case fs.ModeDevice | fs.ModeCharDevice:
		typ = "char"
	}
	fmt.Fprintf(stdout, "type=%s perm=%04o uid=%d gid=%d\n", typ, fi.Mode().Perm(), st.Uid, st.Gid)
	return nil
}

// sndbuf connects to the Unix stream socket PATH and prints the send
// buffer its new socket got (SO_SNDBUF): sndbuf=N.
func sndbuf(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: sndbuf PATH")
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: args[0]}); err != nil {
		return err
	}
	n, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "sndbuf=%d\n", n)
	return nil
}
