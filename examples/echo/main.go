// Command echo is a guest agent built on package vserial: it holds the
// virtio-console ports named on its command line in-process and sends back
// every byte the host sends on them. With -socket-dir, the device's other
// ports are served as Unix sockets there, as `vserial-agent run` would.
//
//	echo [-socket-dir /run/vserial] [-bind auto|uio|vfio] [-poll adaptive|off|200us] PORT...
//
// PORT is the name the host gave the port (QEMU: -device
// virtserialport,name=PORT) or vport<D>p<ID>. A port the host unplugs is
// waited for again. SIGTERM or SIGINT closes every port (the host sees
// PORT_OPEN 0) and gives the devices back. It must run as root.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"sync"
	"syscall"

	"github.com/vserial/vserial"
)

func main() {
	socketDir := flag.String("socket-dir", "", "serve the ports not named here as Unix sockets in this directory")
	bind := flag.String("bind", "auto", "how to take the device: auto, uio or vfio")
	poll := flag.String("poll", "adaptive", "polling after a send: adaptive, off, or a duration such as 200us")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: %s [flags] PORT...\n", os.Args[0])
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() == 0 {
		flag.Usage()
		os.Exit(2)
	}
	// vserial wants two Ps (see its package documentation).
	if os.Getenv("GOMAXPROCS") == "" && runtime.GOMAXPROCS(0) < 2 {
		runtime.GOMAXPROCS(2)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	a, err := vserial.Open(ctx, vserial.Options{SocketDir: *socketDir, Bind: *bind, Poll: *poll, Logger: log})
	if err != nil {
		log.Error("open", "err", err)
		os.Exit(1)
	}
	var wg sync.WaitGroup
	for _, name := range flag.Args() {
		wg.Go(func() { serve(ctx, a, name, log) })
	}
	<-ctx.Done()
	log.Info("stopping")
	// Close ends every conn: the echo loops return.
	if err := a.Close(); err != nil {
		log.Error("close", "err", err)
	}
	wg.Wait()
}

// serve echoes on the port called name until ctx ends, dialing it again
// whenever it goes away.
func serve(ctx context.Context, a *vserial.Agent, name string, log *slog.Logger) {
	for ctx.Err() == nil {
		c, err := a.Dial(ctx, name)
		if err != nil {
			if ctx.Err() == nil {
				log.Error("dial", "port", name, "err", err)
			}
			return
		}
		fmt.Printf("echo: serving %s\n", name)
		n, err := echo(c)
		c.Close()
		log.Info("port ended", "port", name, "bytes", n, "err", err)
	}
}

// echo copies what the host sends back to it until the conn ends. A
// device reset loses bytes but not the port: it goes on.
func echo(c io.ReadWriter) (int64, error) {
	var total int64
	for {
		n, err := io.Copy(c, c)
		total += n
		if errors.Is(err, vserial.ErrDeviceReset) {
			continue
		}
		return total, err
	}
}
