package main

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vserial/vserial/agent"
	"github.com/vserial/vserial/dma"
	"github.com/vserial/vserial/driver"
	"github.com/vserial/vserial/driver/virtiotest"
)

// fakeFn adapts *virtiotest.Function to driver.Function, as devopen
// does for uio and vfio.
type fakeFn struct{ f *virtiotest.Function }

func (a fakeFn) Config() driver.ConfigSpace { return a.f.Config() }
func (a fakeFn) BAR(i int) (driver.BAR, error) {
	b, err := a.f.BAR(i)
	if err != nil {
		return nil, err
	}
	return b, nil
}
func (a fakeFn) IRQ() driver.IRQ    { return a.f.IRQ() }
func (a fakeFn) DMA() dma.Allocator { return a.f.DMA() }
func (a fakeFn) IOMMU() bool        { return a.f.IOMMU() }

// RESIZE from the device (QEMU 7.2 never sends one, so the fake does)
// reaches the console's terminal through the driver and the agent: the pty
// gets the size (TIOCGWINSZ) and the resize hook fires; host bytes reach the
// terminal and what is written on it reaches the host.
func TestConsoleResizeFromFakeDevice(t *testing.T) {
	m := virtiotest.NewConsole(virtiotest.ConsoleConfig{OfferSize: true})
	if err := m.Plug(0, "con", true); err != nil {
		t.Fatal(err)
	}
	f := newFakeFunction(t, m)
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	dev, err := driver.Open(ctx, fakeFn{f}, driver.Config{ResizeOrder: driver.ResizeColsRows})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	resized := make(chan agent.ConsoleResize, 4)
	dir := filepath.Join(shortTempDir(t), "run")
	a, err := agent.New(agent.Config{SocketDir: dir, Console: agent.ConsoleConfig{
		PTY:      true,
		OnResize: func(r agent.ConsoleResize) { resized <- r },
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	p := dev.Port(0)
	if p == nil {
		t.Fatal("no port 0")
	}
	if err := a.AddPort(0, port{p}); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "con"+agent.PTYSuffix)
	var tty string
	for tty == "" {
		tty, _ = os.Readlink(link)
		if ctx.Err() != nil {
			t.Fatalf("no console symlink %s", link)
		}
		time.Sleep(2 * time.Millisecond)
	}
	slave, err := os.OpenFile(link, os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer slave.Close()

	if !m.Resize(0, 100, 40, true) {
		t.Fatal("RESIZE found no control buffer")
	}
	select {
	case r := <-resized:
		if r != (agent.ConsoleResize{Device: 0, ID: 0, Name: "con", PTY: tty, Cols: 100, Rows: 40}) {
			t.Errorf("resize event %+v", r)
		}
	case <-ctx.Done():
		t.Fatal("no resize event")
	}
	ws, err := unix.IoctlGetWinsize(int(slave.Fd()), unix.TIOCGWINSZ)
	if err != nil || ws.Col != 100 || ws.Row != 40 {
		t.Fatalf("TIOCGWINSZ %+v, %v; want 100x40", ws, err)
	}

	if err := m.HostWrite(0, []byte("ls\r")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 16)
	slave.SetReadDeadline(time.Now().Add(patience))
	if n, err := slave.Read(b); err != nil || string(b[:n]) != "ls\n" {
		t.Fatalf("terminal read %q, %v; want \"ls\\n\" (ICRNL)", b[:n], err)
	}
	if _, err := slave.Write([]byte("ok\n")); err != nil {
		t.Fatal(err)
	}
	// The echo of "ls\r" (ls\r\n), then "ok\r\n" (ONLCR).
	got, err := m.HostReadFull(ctx, 0, len("ls\r\nok\r\n"))
	if err != nil || string(got) != "ls\r\nok\r\n" {
		t.Fatalf("host got %q, %v", got, err)
	}
}

// newFakeFunction is a transitional fake PCI function serving m, closed
// when the test ends.
func newFakeFunction(t *testing.T, m *virtiotest.Console) *virtiotest.Function {
	t.Helper()
	f, err := virtiotest.New(m, virtiotest.Options{Transitional: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}
