package main

import (
	"errors"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

const tracefs = "/sys/kernel/tracing"

// schedtrace start|stop: the kernel's scheduler trace (sched_switch,
// sched_wakeup, interrupts) around a measurement; stop prints it.
func schedtrace(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: schedtrace start|stop")
	}
	if _, err := os.Stat(filepath.Join(tracefs, "trace")); err != nil {
		if err := unix.Mount("tracefs", tracefs, "tracefs", 0, ""); err != nil {
			return err
		}
	}
	put := func(name, v string) error {
		return os.WriteFile(filepath.Join(tracefs, name), []byte(v), 0)
	}
	switch args[0] {
	case "start":
		for _, kv := range [][2]string{{"tracing_on", "0"}, {"trace", ""}, {"buffer_size_kb", "8192"},
			{"set_event", "sched:sched_switch sched:sched_wakeup sched:sched_waking irq:irq_handler_entry"}, {"tracing_on", "1"}} {
			if err := put(kv[0], kv[1]); err != nil {
				return err
			}
		}
		return nil
	case "stop":
		if err := put("tracing_on", "0"); err != nil {
			return err
		}
		b, err := os.ReadFile(filepath.Join(tracefs, "trace"))
		if err != nil {
			return err
		}
		_, err = stdout.Write(b)
		return err
	}
	return errors.New("usage: schedtrace start|stop")
}
