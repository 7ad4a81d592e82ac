//go:build !faultinject

package main

import (
	"context"
	"log/slog"
)

// startFaultInjection does nothing in a production build: only the
// faultinject build (inject_on.go) can misuse a device on request.
func startFaultInjection(context.Context, []device, *slog.Logger) {}
