package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestStreamPausesUntilTheFile(t *testing.T) {
	out := captureStdout(t)
	sock, conns := peer(t)
	flag := filepath.Join(t.TempDir(), "go")
	const n1, n2 = 70000, 130001
	type result struct {
		first int64
		sum   string
	}
	res := make(chan result, 1)
	go func() {
		c := <-conns
		h := sha256.New()
		first, _ := io.CopyN(h, c, n1)
		// Nothing more arrives before the file exists.
		c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		var b [1]byte
		if k, _ := c.Read(b[:]); k != 0 {
			first = -1
		}
		c.SetReadDeadline(time.Time{})
		os.WriteFile(flag, nil, 0o644)
		io.Copy(h, c)
		res <- result{first, hex.EncodeToString(h.Sum(nil))}
	}()
	if err := stream([]string{sock, "4", strconv.Itoa(n1), flag, strconv.Itoa(n2)}); err != nil {
		t.Fatal(err)
	}
	r := <-res
	if r.first != n1 {
		t.Errorf("first part: peer got %d bytes before the file existed, want %d", r.first, n1)
	}
	want := patternSum(4, n1+n2)
	if m := kv(out.String()); r.sum != want || m["sha256"] != want || m["bytes"] != strconv.Itoa(n1+n2) {
		t.Errorf("peer got %s, stream printed %q, pattern is %s", r.sum, out, want)
	}
}

func TestRejected(t *testing.T) {
	captureStdout(t)
	// A listener that closes every connection at once: rejected passes.
	sock, conns := peer(t)
	go func() { (<-conns).Close() }()
	if err := rejected([]string{sock, "5"}); err != nil {
		t.Errorf("closed connection: %v", err)
	}
	// One that keeps the connection open: rejected fails.
	sock2, _ := peer(t)
	if err := rejected([]string{sock2, "0.2"}); err == nil || !strings.Contains(err.Error(), "still connected") {
		t.Errorf("open connection: %v", err)
	}
	// One that sends data: not a rejection either.
	sock3, conns3 := peer(t)
	go func() { (<-conns3).Write([]byte("hi")) }()
	if err := rejected([]string{sock3, "5"}); err == nil {
		t.Error("a connection that received data counted as rejected")
	}
}

func TestGreet(t *testing.T) {
	out := captureStdout(t)
	sock, conns := peer(t)
	reply := make(chan string, 1)
	go func() {
		c := <-conns
		io.WriteString(c, "hello from the host\n")
		line, _ := bufio.NewReader(c).ReadString('\n')
		reply <- line
	}()
	if err := greet([]string{sock, "hello from the guest"}); err != nil {
		t.Fatal(err)
	}
	if got := <-reply; got != "hello from the guest\n" {
		t.Errorf("peer got %q", got)
	}
	if !strings.Contains(out.String(), `read="hello from the host"`) {
		t.Errorf("greet printed %q", out)
	}
}

func TestWaitGoneAndTouch(t *testing.T) {
	f := filepath.Join(t.TempDir(), "x")
	if err := touch([]string{f}); err != nil {
		t.Fatal(err)
	}
	if err := waitGone([]string{f, "0.1"}); err == nil {
		t.Error("wait-gone returned while the file exists")
	}
	go func() {
		time.Sleep(50 * time.Millisecond)
		os.Remove(f)
	}()
	if err := waitGone([]string{f, "10"}); err != nil {
		t.Error(err)
	}
}
