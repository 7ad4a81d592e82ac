package main

// The transfer built-ins: sink, source and echo on a port's socket, device
// node or the in-process library's path, and what they share.

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/vserial/vserial/tests/qemu/internal/wire"
)

// openPath opens a port: a Unix socket is dialled, a wire.VserialPrefix
// path is held in-process through package vserial (golib.go), anything
// else is opened read-write as a device file.
func openPath(path string) (io.ReadWriteCloser, error) {
	if spec, ok := strings.CutPrefix(path, wire.VserialPrefix); ok {
		return openVserial(spec)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if fi.Mode()&fs.ModeSocket != 0 {
		return net.Dial("unix", path)
	}
	return os.OpenFile(path, os.O_RDWR, 0)
}

func parseSize(s string) (int64, error) {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("bad byte count %q", s)
	}
	return n, nil
}

// parseSizeSeed parses the N SEED arguments of the transfer built-ins.
func parseSizeSeed(size, seed string) (int64, uint64, error) {
	n, err := parseSize(size)
	if err != nil {
		return 0, 0, err
	}
	sd, err := strconv.ParseUint(seed, 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("bad seed %q", seed)
	}
	return n, sd, nil
}

// report prints a transfer's size, sha256 ("none" when h is nil) and speed.
func report(n int64, h hash.Hash, d time.Duration) {
	sum := "none"
	if h != nil {
		sum = hex.EncodeToString(h.Sum(nil))
	}
	secs := d.Seconds()
	mbps := 0.0
	if secs > 0 {
		mbps = float64(n) / secs / 1e6
	}
	fmt.Fprintf(stdout, "bytes=%d sha256=%s secs=%.6f mbps=%.3f\n", n, sum, secs, mbps)
}

// words reads a built-in's trailing option words, in any order: which of
// known were given, and false for a word it does not know.
func words(args []string, known ...string) (map[string]bool, bool) {
	got := map[string]bool{}
	for _, a := range args {
		if !slices.Contains(known, a) {
			return nil, false
		}
		got[a] = true
	}
	return got, true
}

// sink reads exactly N bytes and prints their sha256 and the throughput
// measured from the first byte to the last. With "count" it only counts:
// hashing under TCG is slower than the transport being measured.
func sink(args []string) error {
	const usage = "usage: sink PATH N [count] [ready] [raw]"
	if len(args) < 2 {
		return errors.New(usage)
	}
	opt, ok := words(args[2:], "count", "ready", "raw")
	if !ok {
		return errors.New(usage)
	}
	count, ready, raw := opt["count"], opt["ready"], opt["raw"]
	n, err := parseSize(args[1])
	if err != nil {
		return err
	}
	f, err := openClient(args[0], raw)
	if err != nil {
		return err
	}
	defer f.Close()
	if ready {
		if _, err := f.Write([]byte{wire.SinkReady}); err != nil {
			return fmt.Errorf("writing the ready byte: %w", err)
		}
	}
	var h hash.Hash = sha256.New()
	if count {
		h = nil
	}
	buf := make([]byte, 256<<10)
	var got int64
	var start time.Time
	for got < n {
		k, err := f.Read(buf[:min(int64(len(buf)), n-got)])
		if k > 0 {
			if got == 0 {
				start = time.Now()
			}
			if h != nil {
				h.Write(buf[:k])
			}
			got += int64(k)
		}
		if err != nil || k == 0 {
			return fmt.Errorf("after %d of %d bytes: %v", got, n, err)
		}
	}
	d := time.Duration(0)
	if !start.IsZero() {
		d = time.Since(start)
	}
	report(n, h, d)
	return nil
}

// source writes N bytes of wire.Pattern(SEED). With "block" it repeats
// the first wire.BlockSize bytes of the pattern and does not hash, so that
// the guest's CPU goes to the transport (the host checks the data).
func source(args []string) error {
	const usage = "usage: source PATH N SEED [block] [raw]"
	if len(args) < 3 {
		return errors.New(usage)
	}
	opt, ok := words(args[3:], "block", "raw")
	if !ok {
		return errors.New(usage)
	}
	block, raw := opt["block"], opt["raw"]
	n, seed, err := parseSizeSeed(args[1], args[2])
	if err != nil {
		return err
	}
	f, err := openClient(args[0], raw)
	if err != nil {
		return err
	}
	defer f.Close()
	p := wire.Pattern(seed)
	var h hash.Hash = sha256.New()
	buf := make([]byte, wire.BlockSize)
	if block {
		_, _ = p.Read(buf)
		h = nil
	}
	start := time.Now()
	for left := n; left > 0; {
		chunk := buf[:min(int64(len(buf)), left)]
		if !block {
			_, _ = p.Read(chunk)
			h.Write(chunk)
		}
		if _, err := f.Write(chunk); err != nil {
			return fmt.Errorf("after %d of %d bytes: %w", n-left, n, err)
		}
		left -= int64(len(chunk))
	}
	report(n, h, time.Since(start))
	return f.Close()
}

// echo writes back everything it reads until end of file.
func echo(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: echo PATH")
	}
	f, err := openPath(args[0])
	if err != nil {
		return err
	}
	defer f.Close()
	// Plain reads and writes: io.Copy between two views of one device file
	// could try copy_file_range or splice on it.
	n, err := io.CopyBuffer(struct{ io.Writer }{f}, struct{ io.Reader }{f}, make([]byte, 64<<10))
	fmt.Fprintf(stdout, "bytes=%d\n", n)
	return err
}
