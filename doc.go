// Package vserial is the root of a guest-side, userspace virtio-console
// (virtio-serial) driver and agent: cmd/vserial-agent takes a
// virtio-console PCI function from the kernel, drives its virtqueues and
// publishes every port as a Unix socket. README.md is the front door and
// docs/README.md indexes the documentation; each package's doc.go states
// its contract.
//
// This package holds no code, only the repository-wide tests that keep the
// packages' promises to each other:
//
//   - TestImportDirections: imports point one way (pump → driver → ring →
//     dma, uio → dma; agent and pciscan import none of them), as the
//     ARCHITECTURE table says.
//   - TestProductionCodeDoesNotImportTests: no production package imports a
//     test-support package (dmatest, ringtest, virtiotest, agenttest,
//     tests/...).
//   - TestEveryGoroutineIsGuarded: every goroutine production code starts
//     begins with defer guard.Recover() (package internal/guard), so a panic
//     anywhere gets the agent's last gasp.
package vserial
