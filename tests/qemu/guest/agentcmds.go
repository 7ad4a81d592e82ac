package main

import (
	"bufio"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/vserial/vserial/tests/qemu/internal/wire"
)

// Built-ins for the vserial-agent guest tests: they talk to the agent's
// port sockets the way a guest program would.

// waitGone waits until PATH no longer exists (a socket the agent removed).
func waitGone(args []string) error {
	if len(args) != 2 {
		return errors.New("usage: wait-gone PATH SECONDS")
	}
	s, err := strconv.ParseFloat(args[1], 64)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(time.Duration(s * float64(time.Second)))
	for {
		if _, err := os.Lstat(args[0]); errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s still exists after %ss", args[0], args[1])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// touch creates FILE (empty) if it does not exist.
func touch(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: touch FILE")
	}
	f, err := os.OpenFile(args[0], os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	return f.Close()
}

// stream writes N1 bytes of wire.Pattern(SEED) to the port, waits until
// FILE exists, then writes the next N2 bytes of the same pattern on the
// same connection, and prints the total and its sha256. The host uses the
// pause to change something (disconnect) between the two parts.
func stream(args []string) error {
	if len(args) != 5 {
		return errors.New("usage: stream PATH SEED N1 FILE N2")
	}
	seed, err := strconv.ParseUint(args[1], 10, 64)
	if err != nil {
		return fmt.Errorf("bad seed %q", args[1])
	}
	n1, err1 := parseSize(args[2])
	n2, err2 := parseSize(args[4])
	if err := errors.Join(err1, err2); err != nil {
		return err
	}
	f, err := openPath(args[0])
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	src := io.TeeReader(wire.Pattern(seed), h)
	start := time.Now()
	if _, err := io.CopyN(f, src, n1); err != nil {
		return fmt.Errorf("first part: %w", err)
	}
	for {
		if _, err := os.Stat(args[3]); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := io.CopyN(f, src, n2); err != nil {
		return fmt.Errorf("second part: %w", err)
	}
	report(n1+n2, h, time.Since(start))
	return f.Close()
}

// rejected connects to a port socket that another client holds and checks
// that the agent closes the connection (end of file or reset) within
// SECONDS without sending anything. It prints how long that took.
func rejected(args []string) error {
	if len(args) != 2 {
		return errors.New("usage: rejected PATH SECONDS")
	}
	s, err := strconv.ParseFloat(args[1], 64)
	if err != nil {
		return err
	}
	start := time.Now()
	c, err := net.Dial("unix", args[0])
	if err != nil {
		// Refused outright is a rejection too.
		fmt.Fprintf(stdout, "rejected=dial err=%q\n", err.Error())
		return nil
	}
	defer c.Close()
	_ = c.SetReadDeadline(start.Add(time.Duration(s * float64(time.Second))))
	var b [64]byte
	n, err := c.Read(b[:])
	switch {
	case n > 0:
		return fmt.Errorf("second client received %q instead of being closed", b[:n])
	case errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("second client still connected after %ss", args[1])
	case err == nil:
		return errors.New("zero-byte read without an error")
	}
	fmt.Fprintf(stdout, "rejected=closed err=%q ms=%.1f\n", err.Error(), float64(time.Since(start).Microseconds())/1e3)
	return nil
}

// greet is a tiny guest program for the demo: it reads one line from the
// port, prints it, and answers with REPLY and a newline.
func greet(args []string) error {
	if len(args) != 2 {
		return errors.New("usage: greet PATH REPLY")
	}
	f, err := openPath(args[0])
	if err != nil {
		return err
	}
	defer f.Close()
	line, err := bufio.NewReader(f).ReadString('\n')
	if err != nil {
		return fmt.Errorf("reading a line: %w (got %q)", err, line)
	}
	fmt.Fprintf(stdout, "read=%s\n", strconv.Quote(strings.TrimSuffix(line, "\n")))
	if _, err := io.WriteString(f, args[1]+"\n"); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote=%s\n", strconv.Quote(args[1]))
	return f.Close()
}

// symlink makes LINK a symbolic link to TARGET, creating LINK's directory
// (what udev does for /dev/virtio-ports/NAME in a guest without udev).
func symlink(args []string) error {
	if len(args) != 2 {
		return errors.New("usage: symlink TARGET LINK")
	}
	if err := os.MkdirAll(filepath.Dir(args[1]), 0o755); err != nil {
		return err
	}
	return os.Symlink(args[0], args[1])
}

// rm removes PATH (a file, a link or an empty directory).
func rm(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: rm PATH")
	}
	return os.Remove(args[0])
}
