package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

// udev-env: the udev rule of vserial's port nodes
// (contrib/udev/61-vserial-nodes.rules) runs it as IMPORT{program} to
// learn the port's name, which a CUSE device does not carry the way the
// kernel's port carries its name attribute: it finds the
// /dev/virtio-ports/NAME link the agent made for the node and prints
// VSERIAL_PORT_NAME=NAME. The rule then names the same link (SYMLINK+=), so
// udev's database and systemd's device units know it, as for the kernel's
// ports.

const udevEnvUsage = `Usage: vserial-agent udev-env [flags] NODE

Prints VSERIAL_PORT_NAME=NAME for vserial's port node /dev/NODE (a
vport<D>p<ID> that 'run --nodes' made), NAME being the port's name: the
/dev/virtio-ports/NAME link the agent made for it. For udev's
IMPORT{program} (contrib/udev/61-vserial-nodes.rules, docs/nodes.md). It
waits up to --wait for the link, which the agent makes just after the
node. Exit 0 with the line; 1 when no link names the node (a port
without a name); 2 on a usage error.

Flags:
`

// nodeName is what the agent's nodes are called, like the kernel's ports.
var nodeName = regexp.MustCompile(`^vport[0-9]+p[0-9]+$`)

func udevEnv(args []string, stdout, stderr io.Writer) int {
	fl := pflag.NewFlagSet("udev-env", pflag.ContinueOnError)
	fl.SetOutput(stderr)
	fl.Usage = func() { fmt.Fprint(stderr, udevEnvUsage+fl.FlagUsages()) }
	dev := fl.String("dev", "/dev", "where devtmpfs is mounted")
	wait := fl.Duration("wait", 3*time.Second, "how long to wait for the agent's link")
	if err := fl.Parse(args); err != nil {
		return fail(stderr, "udev-env", usagef("udev-env", "%v", err))
	}
	if fl.NArg() != 1 || !nodeName.MatchString(fl.Arg(0)) {
		return fail(stderr, "udev-env", usagef("udev-env", "want one node name vport<D>p<ID>, got %q", fl.Args()))
	}
	node := filepath.Join(*dev, fl.Arg(0))
	deadline := time.Now().Add(*wait)
	for {
		if name := linkTo(filepath.Join(*dev, "virtio-ports"), node); name != "" {
			fmt.Fprintf(stdout, "VSERIAL_PORT_NAME=%s\n", name)
			return exitOK
		}
		if time.Now().After(deadline) {
			fmt.Fprintf(stderr, "vserial-agent udev-env: no link in %s/virtio-ports names %s\n", *dev, node)
			return exitFailure
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// linkTo returns the name of the link in dir that points at node, or "".
// A name udev could not carry on one line is skipped.
func linkTo(dir, node string) string {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return ""
	}
	for _, e := range ents {
		target, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		if !filepath.IsAbs(target) {
			target = filepath.Join(dir, target)
		}
		if filepath.Clean(target) == node && !strings.ContainsFunc(e.Name(), func(r rune) bool { return r <= ' ' || r == 0x7f }) {
			return e.Name()
		}
	}
	return ""
}
