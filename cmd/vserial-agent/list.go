package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/vserial/vserial/agent"
	"github.com/vserial/vserial/internal/devopen"
	"github.com/vserial/vserial/pciscan"
)

// queryTimeout bounds the status request to a running agent.
const queryTimeout = 5 * time.Second

// listReport is the output of `list --json`.
type listReport struct {
	Functions      []functionJSON     `json:"functions"`
	FunctionsError string             `json:"functions_error,omitempty"`
	Agent          agent.StatusReport `json:"agent"` // the shape of the agent's own status answer
}

type functionJSON struct {
	Addr       string `json:"addr"`
	Vendor     string `json:"vendor"`
	Device     string `json:"device"`
	SubVendor  string `json:"subsystem_vendor"`
	SubDevice  string `json:"subsystem_device"`
	Revision   string `json:"revision"`
	Class      string `json:"class"`
	Driver     string `json:"driver"` // "" when no driver holds it
	IOMMUGroup string `json:"iommu_group"`
	Path       string `json:"path"`
	// Bind and BindReason are what `run --bind auto` would choose for the
	// function (uio or vfio) and why (chooseBind).
	Bind       string `json:"bind"`
	BindReason string `json:"bind_reason"`
}

// list is `vserial-agent list`. It exits 1 when sysfs cannot be read or a
// running agent cannot be asked; no agent running is not an error.
func list(ctx context.Context, cfg listConfig, stdout, stderr io.Writer) int {
	fns, scanErr := pciscan.Scan(cfg.Sysfs)
	qctx, cancel := context.WithTimeout(ctx, queryTimeout)
	status, queryErr := agent.QueryReport(qctx, cfg.SocketDir)
	cancel()
	env := devopen.HostEnv(cfg.Sysfs)
	choose := func(f pciscan.Function) bindChoice { return devopen.Choose(env, f) }
	rep := buildReport(cfg.SocketDir, fns, scanErr, status.Ports, queryErr, choose)
	rep.Agent.Subscribers = status.Subscribers
	rep.Agent.ControlRefused = status.ControlRefused
	var err error
	if cfg.JSON {
		err = writeJSON(stdout, rep)
	} else {
		err = writeText(stdout, rep)
	}
	if err != nil {
		fmt.Fprintf(stderr, "vserial-agent list: %v\n", err)
		return exitFailure
	}
	code := exitOK
	if scanErr != nil {
		fmt.Fprintf(stderr, "vserial-agent list: %v\n", scanErr)
		code = exitFailure
	}
	if queryErr != nil && !errors.Is(queryErr, agent.ErrNotRunning) {
		fmt.Fprintf(stderr, "vserial-agent list: %v\n", queryErr)
		code = exitFailure
	}
	return code
}

// buildReport assembles what list prints: the virtio-console functions and
// the agent's ports; choose says which binding --bind auto takes.
func buildReport(socketDir string, fns []pciscan.Function, scanErr error, ports []agent.PortStatus, queryErr error, choose func(pciscan.Function) bindChoice) listReport {
	rep := listReport{
		Functions: []functionJSON{},
		Agent:     agent.StatusReport{SocketDir: socketDir, Ports: []agent.PortStatus{}},
	}
	if scanErr != nil {
		rep.FunctionsError = scanErr.Error()
	}
	for _, f := range fns {
		if !pciscan.IsConsole(f) {
			continue
		}
		c := choose(f)
		rep.Functions = append(rep.Functions, functionJSON{
			Addr:       f.Addr,
			Vendor:     fmt.Sprintf("%04x", f.Vendor),
			Device:     fmt.Sprintf("%04x", f.Device),
			SubVendor:  fmt.Sprintf("%04x", f.SubVendor),
			SubDevice:  fmt.Sprintf("%04x", f.SubDevice),
			Revision:   fmt.Sprintf("%02x", f.Revision),
			Class:      fmt.Sprintf("%06x", f.Class),
			Driver:     f.Driver,
			IOMMUGroup: f.IOMMUGroup,
			Path:       f.Path,
			Bind:       c.Bind,
			BindReason: c.Reason,
		})
	}
	switch {
	case queryErr == nil:
		rep.Agent.Running = true
	case errors.Is(queryErr, agent.ErrNotRunning):
	default:
		rep.Agent.Error = queryErr.Error()
	}
	rep.Agent.Ports = append(rep.Agent.Ports, ports...)
	return rep
}

func writeJSON(w io.Writer, rep listReport) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}

func writeText(w io.Writer, rep listReport) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	switch {
	case rep.FunctionsError != "":
		fmt.Fprintf(tw, "virtio-console functions: cannot scan: %s\n", escapeText(rep.FunctionsError))
	case len(rep.Functions) == 0:
		fmt.Fprintf(tw, "virtio-console functions: none\n")
	default:
		fmt.Fprintf(tw, "FUNCTION\tID\tSUBSYSTEM\tDRIVER\tIOMMU GROUP\tBIND (auto)\n")
		for _, f := range rep.Functions {
			fmt.Fprintf(tw, "%s\t%s:%s\t%s:%s\t%s\t%s\t%s\n", f.Addr, f.Vendor, f.Device, f.SubVendor, f.SubDevice, dash(f.Driver), dash(f.IOMMUGroup),
				bindChoice{Bind: f.Bind, Reason: f.BindReason})
		}
	}
	fmt.Fprintln(tw)
	switch {
	case rep.Agent.Error != "":
		fmt.Fprintf(tw, "agent on %s: %s\n", rep.Agent.SocketDir, escapeText(rep.Agent.Error))
	case !rep.Agent.Running:
		fmt.Fprintf(tw, "agent on %s: not running\n", rep.Agent.SocketDir)
	case len(rep.Agent.Ports) == 0:
		fmt.Fprintf(tw, "agent on %s: no ports\n", rep.Agent.SocketDir)
	default:
		fmt.Fprintf(tw, "DEV\tPORT\tNAME\tMODE\tSOCKET\tHOST\tCLIENT\tIN\tOUT\tDISCARDED\tREJECTED\n")
		for _, p := range rep.Agent.Ports {
			// Names come from the host, paths partly too: quoted as
			// events quotes them when they hold blanks or controls.
			where := cell(p.Socket)
			if p.Mode == agent.ModeConnect {
				where = "→ " + cell(p.Target)
			}
			fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\n", p.Device, p.ID, cell(p.Name), cell(string(p.Mode)), where,
				yesNo(p.HostConnected), yesNo(p.ClientConnected), p.BytesIn, p.BytesOut, p.Discarded, p.RejectedClients)
		}
		for _, p := range rep.Agent.Ports {
			if p.NameProblem != "" {
				fmt.Fprintf(tw, "note: device %d port %d %s is served as %s: %s\n", p.Device, p.ID, strconv.Quote(p.Name), cell(p.Socket), escapeText(p.NameProblem))
			}
		}
	}
	return tw.Flush()
}

// cell is s as a column of the text output: "-" when empty, quoted when
// it holds blanks, quotes or characters a terminal could act on.
func cell(s string) string {
	if s == "" {
		return "-"
	}
	return quote(s)
}

// escapeText escapes, in a free-text message, what a terminal could act
// on (the message may quote a host-chosen name).
func escapeText(s string) string {
	if !unprintable(s) {
		return s
	}
	q := strconv.Quote(s)
	return q[1 : len(q)-1]
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
