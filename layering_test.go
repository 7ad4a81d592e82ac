package vserial_test

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/vserial/vserial"

// forbidden lists, for each package (prefix), the project packages it must
// never depend on, directly or indirectly (ARCHITECTURE.md, "Packages and the
// direction of their imports"). Test-support packages are checked too: they
// live under the package they fake.
var forbidden = map[string][]string{
	"dma":     {"ring", "driver", "uio", "pciscan", "agent", "cmd"},
	"ring":    {"driver", "uio", "pciscan", "agent", "cmd", "pump"},
	"driver":  {"uio", "pciscan", "agent", "cmd", "pump"},
	"uio":     {"ring", "driver", "agent", "cmd", "pump"},
	"pciscan": {"ring", "driver", "uio", "agent", "dma", "cmd"},
	"agent":   {"ring", "driver", "uio", "dma", "pciscan", "cmd", "pump"},
	// pump owns client descriptors and the device's loop above driver's
	// poll face; it never reaches the hardware itself.
	"pump": {"uio", "pciscan", "agent", "cmd"},
	// internal/devopen takes a function from the kernel and brings it up
	// with its loop, for cmd and the root package alike; it knows
	// nothing of sockets. internal/agentwire converts between the driver
	// and the agent for the same two.
	"internal/devopen":   {"agent", "cmd"},
	"internal/agentwire": {"uio", "pciscan", "cmd"},
}

// rootImporters are the only top-level directories whose packages may
// import the root package vserial (the library): its users. The root may
// import every sub-package.
var rootImporters = []string{"cmd", "tests", "examples"}

type pkg struct {
	ImportPath string
	Deps       []string
}

func TestImportDirections(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps=false", "-json", "./...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	seen := 0
	for dec.More() {
		var p pkg
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		rel := strings.TrimPrefix(strings.TrimPrefix(p.ImportPath, module), "/")
		top := strings.SplitN(rel, "/", 2)[0]
		bans, ok := forbidden[top]
		if parts := strings.SplitN(rel, "/", 3); len(parts) > 1 && !ok {
			bans, ok = forbidden[parts[0]+"/"+parts[1]]
		}
		if !ok {
			continue
		}
		seen++
		for _, d := range p.Deps {
			if !strings.HasPrefix(d, module+"/") {
				continue
			}
			dtop := strings.SplitN(strings.TrimPrefix(d, module+"/"), "/", 2)[0]
			for _, b := range bans {
				if dtop == b {
					t.Errorf("%s depends on %s: %s must not import %s (see ARCHITECTURE.md)", p.ImportPath, d, top, b)
				}
			}
		}
	}
	if seen == 0 {
		t.Fatal("go list reported none of the layered packages")
	}
}

func TestOnlyUsersImportTheRoot(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", "{{.ImportPath}} {{join .Imports \" \"}} {{join .TestImports \" \"}} {{join .XTestImports \" \"}}", "./...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] == module {
			continue
		}
		top := strings.SplitN(strings.TrimPrefix(f[0], module+"/"), "/", 2)[0]
		user := false
		for _, u := range rootImporters {
			user = user || top == u
		}
		for _, d := range f[1:] {
			if d == module && !user {
				t.Errorf("%s imports the root package %s: only %v may (it would import the whole library)", f[0], module, rootImporters)
			}
		}
	}
}

func TestProductionCodeDoesNotImportTests(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", "{{.ImportPath}} {{join .Deps \" \"}}", "./...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || strings.Contains(f[0], "test") {
			continue
		}
		for _, d := range f[1:] {
			if strings.HasPrefix(d, module+"/") && (strings.HasSuffix(d, "test") || strings.Contains(d, "/tests/")) {
				t.Errorf("%s (production) depends on test-support package %s", f[0], d)
			}
		}
	}
}
