package main

import (
	"strconv"
	"testing"
)

func TestCalibPrintsEveryFigure(t *testing.T) {
	out := captureStdout(t)
	if err := calib([]string{"20", "1000"}); err != nil {
		t.Fatal(err)
	}
	m := kv(out.String())
	for _, k := range []string{"getppid_us", "copy_us_per_kib", "pipecopy_us_per_kib", "unixcopy_us_per_kib",
		"proc_unix_p50_us", "proc_pipe_p50_us", "thread_unix_p50_us", "thread_pipe_p50_us", "thread_pipe_mean_us", "proc_unix_go_p50_us",
		"proc_unix_raw_p50_us", "proc_unix_raw_mean_us"} {
		if v, err := strconv.ParseFloat(m[k], 64); err != nil || v <= 0 {
			t.Errorf("%s = %q in %q", k, m[k], out)
		}
	}
}

func TestCalibProcPrintsTheRawPingPong(t *testing.T) {
	out := captureStdout(t)
	if err := calibProc([]string{"20"}); err != nil {
		t.Fatal(err)
	}
	m := kv(out.String())
	for _, k := range []string{"proc_unix_raw_p50_us", "proc_unix_raw_mean_us"} {
		if v, err := strconv.ParseFloat(m[k], 64); err != nil || v <= 0 {
			t.Errorf("%s = %q in %q", k, m[k], out)
		}
	}
	for _, bad := range [][]string{nil, {"0"}, {"x"}, {"1", "2"}} {
		if err := calibProc(bad); err == nil {
			t.Errorf("calib-proc %q: no error", bad)
		}
	}
}
