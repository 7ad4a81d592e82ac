package main

import (
	"fmt"
	"io"
	"runtime/debug"
	"strings"
)

// versionText is what `vserial-agent --version` prints: the module version
// (a tag or pseudo-version when built with `go install ...@version`,
// "(devel)" when built from a checkout) and the VCS revision, commit time
// and whether the tree had uncommitted changes, as go build stamped them
// (-buildvcs, on by default in a git checkout; Go does not stamp a build
// made in a linked git worktree, whose .git is a file, nor one with
// GOFLAGS=-buildvcs=false). ok is ReadBuildInfo's.
func versionText(bi *debug.BuildInfo, ok bool) string {
	if !ok || bi == nil {
		return "vserial-agent: no build information in this binary\n"
	}
	version := bi.Main.Version
	if version == "" {
		version = "(unknown)"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "vserial-agent %s\n", version)
	if bi.Main.Path != "" {
		fmt.Fprintf(&b, "module:   %s\n", bi.Main.Path)
	}
	vcs := map[string]string{}
	for _, s := range bi.Settings {
		vcs[s.Key] = s.Value
	}
	if rev := vcs["vcs.revision"]; rev != "" {
		if vcs["vcs.modified"] == "true" {
			rev += " (modified)"
		}
		fmt.Fprintf(&b, "revision: %s\n", rev)
		if t := vcs["vcs.time"]; t != "" {
			fmt.Fprintf(&b, "time:     %s\n", t)
		}
	} else {
		b.WriteString("revision: unknown (built without VCS information: -buildvcs=false, or not from a checkout)\n")
	}
	fmt.Fprintf(&b, "go:       %s\n", bi.GoVersion)
	return b.String()
}

// printVersion answers --version and the version command, which take no
// arguments.
func printVersion(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		fmt.Fprintf(stderr, "vserial-agent version: takes no arguments (got %q)\n", args)
		return exitUsage
	}
	bi, ok := debug.ReadBuildInfo()
	fmt.Fprint(stdout, versionText(bi, ok))
	return exitOK
}
