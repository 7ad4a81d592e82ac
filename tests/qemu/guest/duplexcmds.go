package main

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/vserial/vserial/tests/qemu/internal/wire"
)

// duplex moves data both ways at once on one connection: it reads NIN
// bytes and checks them against wire.Pattern(SEEDIN) as they come, while it
// writes NOUT bytes of wire.Pattern(SEEDOUT); either count may be 0. It
// stops a direction at its count or at its first error (end of file
// included), closes the connection once both have stopped, and prints
//
//	in=BYTES in_mismatch=OFFSET in_err=ERR out=BYTES out_err=ERR
//
// where in_mismatch is the offset of the first byte that differs from the
// pattern (-1: none; a gap or a duplicate shows there), out counts the
// bytes the connection accepted, and ERR is "none" or the error with
// spaces as underscores. It fails (after printing) when a direction did
// not finish: a test that breaks the connection on purpose reads the
// report to see what the client was told.
func duplex(args []string) error {
	const usage = "usage: duplex PATH NIN SEEDIN NOUT SEEDOUT"
	if len(args) != 5 {
		return errors.New(usage)
	}
	nin, seedIn, err := parseSizeSeed(args[1], args[2])
	if err != nil {
		return err
	}
	nout, seedOut, err := parseSizeSeed(args[3], args[4])
	if err != nil {
		return err
	}
	f, err := openPath(args[0])
	if err != nil {
		return err
	}
	var r duplexResult
	var wg sync.WaitGroup
	wg.Go(func() { r.in, r.mismatch, r.inErr = readPattern(f, nin, seedIn) })
	wg.Go(func() {
		w, err := io.CopyN(f, wire.Pattern(seedOut), nout)
		r.out, r.outErr = w, err
	})
	wg.Wait()
	cerr := f.Close()
	fmt.Fprintln(stdout, r)
	switch {
	case r.inErr != nil || r.outErr != nil:
		return errors.New("incomplete")
	case r.mismatch >= 0:
		return fmt.Errorf("received bytes differ from the pattern at offset %d", r.mismatch)
	}
	return cerr
}

type duplexResult struct {
	in, mismatch, out int64
	inErr, outErr     error
}

func (r duplexResult) String() string {
	word := func(err error) string {
		if err == nil {
			return "none"
		}
		return strings.ReplaceAll(err.Error(), " ", "_")
	}
	return fmt.Sprintf("in=%d in_mismatch=%d in_err=%s out=%d out_err=%s", r.in, r.mismatch, word(r.inErr), r.out, word(r.outErr))
}

// readPattern reads n bytes from r and compares them with wire.Pattern(seed)
// as they come. It returns the bytes read, the offset of the first one that
// differs (-1: none) and the error that stopped it before n (io.EOF for an
// early end).
func readPattern(r io.Reader, n int64, seed uint64) (got, mismatch int64, err error) {
	p := wire.Pattern(seed)
	buf := make([]byte, 64<<10)
	want := make([]byte, len(buf))
	mismatch = -1
	for got < n {
		k, rerr := r.Read(buf[:min(int64(len(buf)), n-got)])
		if k > 0 {
			_, _ = p.Read(want[:k])
			if i := wire.Mismatch(buf[:k], want[:k]); mismatch < 0 && i >= 0 {
				mismatch = got + int64(i)
			}
			got += int64(k)
		}
		if rerr != nil {
			return got, mismatch, rerr
		}
		if k == 0 {
			return got, mismatch, io.ErrNoProgress
		}
	}
	return got, mismatch, nil
}
