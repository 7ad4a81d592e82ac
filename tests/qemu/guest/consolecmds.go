package main

import (
	"bufio"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"

	"github.com/vserial/vserial/tests/qemu/internal/wire"
	"golang.org/x/sys/unix"
)

// Built-ins for the console guest tests: a program for vserial-agent's
// --console-exec, and a guest program that uses a console's terminal.

// minish is a tiny interactive shell, the program the console tests run on
// a console's terminal (u-root's shells need more of a system than the
// test image has). It prints a prompt, reads a line from stdin and runs it:
// "tty" prints the name of stdin and whether it is a terminal, "size" its
// window size, "pid" the shell's pid and session, "exit [N]" ends the
// shell; any other line runs as a program (built-ins of this helper first,
// then PATH) with the terminal as its stdio, followed by "[exit N]". End of
// input (a hang-up) ends it too.
func minish(args []string) error {
	if len(args) != 0 {
		return errors.New("usage: minish")
	}
	in := bufio.NewReader(os.Stdin)
	out := os.Stdout
	for {
		fmt.Fprint(out, wire.MinishPrompt)
		line, err := in.ReadString('\n')
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		switch f[0] {
		case "tty":
			name, _ := os.Readlink("/proc/self/fd/0")
			_, terr := unix.IoctlGetTermios(0, unix.TCGETS)
			fmt.Fprintf(out, "tty=%s isatty=%v\n", name, terr == nil)
		case "size":
			ws, err := unix.IoctlGetWinsize(0, unix.TIOCGWINSZ)
			if err != nil {
				fmt.Fprintf(out, "size: %v\n", err)
				continue
			}
			fmt.Fprintf(out, "rows=%d cols=%d\n", ws.Row, ws.Col)
		case "pid":
			sid, _ := unix.Getsid(0)
			fmt.Fprintf(out, "pid=%d sid=%d\n", os.Getpid(), sid)
		case "exit":
			code := 0
			if len(f) > 1 {
				code, _ = strconv.Atoi(f[1])
			}
			os.Exit(code)
		default:
			var cmd *exec.Cmd
			if _, ok := builtins[f[0]]; ok {
				cmd = command(f)
			} else {
				cmd = exec.Command(f[0], f[1:]...)
			}
			cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, out, out
			err := cmd.Run()
			fmt.Fprintf(out, "[exit %d]\n", exitCode(err))
		}
	}
}

// ptyXfer opens the terminal at PATH (a console's symlink) as a guest
// program would, puts it in raw mode so bytes pass unchanged, writes
// wire.PTYReady and N bytes of wire.Pattern(SEED), then reads N bytes and
// prints their sha256 (as sha256=) and that of what it wrote (sent=).
func ptyXfer(args []string) error {
	if len(args) != 3 {
		return errors.New("usage: ptyxfer PATH N SEED")
	}
	n, seed, err := parseSizeSeed(args[1], args[2])
	if err != nil {
		return err
	}
	f, err := os.OpenFile(args[0], os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := makeRaw(int(f.Fd())); err != nil {
		return fmt.Errorf("%s: raw mode: %w", args[0], err)
	}
	if _, err := io.WriteString(f, wire.PTYReady); err != nil {
		return err
	}
	hs := sha256.New()
	if _, err := io.CopyN(io.MultiWriter(f, hs), wire.Pattern(seed), n); err != nil {
		return fmt.Errorf("writing: %w", err)
	}
	hr := sha256.New()
	got, err := io.CopyN(hr, f, n)
	if err != nil {
		return fmt.Errorf("reading after %d of %d bytes: %w", got, n, err)
	}
	fmt.Fprintf(stdout, "bytes=%d sha256=%x sent=%x\n", n, hr.Sum(nil), hs.Sum(nil))
	return nil
}
