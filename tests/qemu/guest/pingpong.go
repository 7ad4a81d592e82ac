package main

// The round-trip client of the benchmarks: pingpong, on Go's poller or, as
// a client written in C would, on a blocking descriptor with raw calls.

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"
)

// pingpong sends one byte and waits for it to come back, COUNT times, and
// prints the round-trip statistics. The host side echoes. With "samples"
// it also prints every round trip, in µs (samples_us=12.3,45.6,...), so
// that the host can pool the samples of several runs. With "raw" it uses
// a blocking descriptor and raw system calls (rawFD), as a client
// written in C would, instead of Go's poller.
func pingpong(args []string) error {
	const usage = "usage: pingpong PATH COUNT [samples] [raw]"
	if len(args) < 2 {
		return errors.New(usage)
	}
	opt, ok := words(args[2:], "samples", "raw")
	if !ok {
		return errors.New(usage)
	}
	withSamples, raw := opt["samples"], opt["raw"]
	count, err := strconv.Atoi(args[1])
	if err != nil || count <= 0 {
		return fmt.Errorf("bad count %q", args[1])
	}
	f, err := openClient(args[0], raw)
	if err != nil {
		return err
	}
	defer f.Close()
	rtts := make([]time.Duration, count)
	var b [1]byte
	for i := range count {
		out := byte(i)
		t0 := time.Now()
		if _, err := f.Write([]byte{out}); err != nil {
			return fmt.Errorf("round %d: %w", i, err)
		}
		if _, err := io.ReadFull(f, b[:]); err != nil {
			return fmt.Errorf("round %d: %w", i, err)
		}
		rtts[i] = time.Since(t0)
		if b[0] != out {
			return fmt.Errorf("round %d: sent %#x, got %#x back", i, out, b[0])
		}
	}
	var sum time.Duration
	var samples []string
	for _, d := range rtts {
		sum += d
		if withSamples {
			samples = append(samples, strconv.FormatFloat(float64(d)/1e3, 'f', 1, 64))
		}
	}
	if withSamples {
		fmt.Fprintf(stdout, "samples_us=%s\n", strings.Join(samples, ","))
	}
	slices.Sort(rtts)
	us := func(d time.Duration) float64 { return float64(d) / 1e3 }
	fmt.Fprintf(stdout, "count=%d mean_us=%.1f p50_us=%.1f p99_us=%.1f max_us=%.1f\n",
		count, us(sum/time.Duration(count)), us(rtts[count/2]), us(rtts[(count*99)/100]), us(rtts[count-1]))
	return nil
}
