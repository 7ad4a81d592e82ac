//go:build !faultinject

package main

import (
	"context"
	"log/slog"

	"github.com/vserial/vserial/internal/supervisor"
)

// startFaultInjection does nothing in a production build: only the
// faultinject build (inject_on.go) can misuse a device on request.
func startFaultInjection(context.Context, func() []supervisor.Device, *slog.Logger) {}
