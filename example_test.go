package vserial_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/vserial/vserial"
)

// A guest agent that answers each line the host sends on the port QEMU
// calls org.example.echo (-device virtserialport,name=org.example.echo).
func Example() {
	ctx := context.Background()
	a, err := vserial.Open(ctx, vserial.Options{
		Logger: slog.New(slog.NewTextHandler(os.Stderr, nil)),
	})
	if err != nil {
		log.Fatal(err)
	}
	defer a.Close()
	c, err := a.Dial(ctx, "org.example.echo")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	lines := bufio.NewScanner(c)
	for lines.Scan() {
		if _, err := fmt.Fprintf(c, "you said: %s\n", lines.Text()); err != nil {
			log.Fatal(err)
		}
	}
	log.Printf("port ended: %v", lines.Err())
}

// Hold one port in-process and serve the others as Unix sockets, as
// `vserial-agent run` would, on a function named by its PCI address.
func ExampleOpen() {
	a, err := vserial.Open(context.Background(), vserial.Options{
		Devices:   []string{"0000:00:04.0"},
		Bind:      "uio",
		SocketDir: "/run/vserial",
		Poll:      "adaptive",
	})
	if err != nil {
		log.Fatal(err)
	}
	defer a.Close()
	c, err := a.Dial(context.Background(), "vport0p1") // the port without a name
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	io.Copy(os.Stdout, c)
}

// Wait at most ten seconds for the host to plug the port, and give up on
// a reply after one second.
func ExampleAgent_Dial() {
	a, err := vserial.Open(context.Background(), vserial.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer a.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := a.Dial(ctx, "org.example.rpc")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("ping\n")); err != nil {
		log.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(time.Second))
	reply := make([]byte, 64)
	n, err := c.Read(reply)
	if err != nil {
		log.Fatal(err) // os.ErrDeadlineExceeded if the host is silent
	}
	fmt.Printf("%s", reply[:n])
}

// Serve until SIGTERM, or until every device stopped (its interrupt
// failed for good, the function was taken away): then exit 1, as
// `vserial-agent run` does.
func ExampleAgent_Done() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	a, err := vserial.Open(ctx, vserial.Options{SocketDir: "/run/vserial", Program: "my-agent"})
	if err != nil {
		log.Fatal(err)
	}
	code := 0
	select {
	case <-ctx.Done():
	case <-a.Done():
		log.Print(a.Err()) // vserial.ErrEveryDeviceStopped
		code = 1
	}
	a.Close()
	os.Exit(code)
}
