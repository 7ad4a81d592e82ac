package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestListenGreet(t *testing.T) {
	out := captureStdout(t)
	sock := filepath.Join(t.TempDir(), "l.sock")
	done := make(chan error, 1)
	go func() { done <- listenGreet([]string{sock, "2"}) }()
	for i := 1; i <= 2; i++ {
		var c net.Conn
		var err error
		for start := time.Now(); time.Since(start) < 10*time.Second; time.Sleep(5 * time.Millisecond) {
			if c, err = net.Dial("unix", sock); err == nil {
				break
			}
		}
		if err != nil {
			t.Fatal(err)
		}
		r := bufio.NewReader(c)
		line, err := r.ReadString('\n')
		if want := fmt.Sprintf("hello %d\n", i); line != want || err != nil {
			t.Fatalf("connection %d: got %q, %v; want %q", i, line, err, want)
		}
		fmt.Fprintf(c, "ack %d\n", i)
		if _, err := r.ReadString('\n'); err == nil {
			t.Errorf("connection %d not closed after the reply", i)
		}
		c.Close()
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), `read="ack 1"`) || !strings.Contains(out.String(), `read="ack 2"`) {
		t.Errorf("listen-greet printed %q", out)
	}
}

func TestStatFile(t *testing.T) {
	out := captureStdout(t)
	f := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(f, nil, 0o640); err != nil {
		t.Fatal(err)
	}
	os.Chmod(f, 0o640)
	if err := statFile([]string{f}); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("type=file perm=0640 uid=%d gid=%d\n", os.Getuid(), os.Getgid())
	if out.String() != want {
		t.Errorf("stat printed %q, want %q", out, want)
	}
}
