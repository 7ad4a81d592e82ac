package vserial_test

import (
	"encoding/json"
	"fmt"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
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
	// internal/rawio is the data plane's raw system calls (pump, agent):
	// a leaf that knows nothing of vserial.
	"internal/rawio": {"dma", "ring", "driver", "uio", "pciscan", "agent", "cmd", "pump"},
	// cuse speaks Linux's CUSE protocol for any character device: a leaf
	// that knows nothing of virtio. internal/portnode serves a port
	// through it with Linux's virtio_console semantics, above the loop,
	// and knows nothing of sockets (cmd shares the port between both).
	"cuse":              {"dma", "ring", "driver", "uio", "pciscan", "agent", "cmd", "pump"},
	"internal/portnode": {"uio", "pciscan", "agent", "cmd"},
}

// layer names the entry of forbidden that a package path (relative to the
// module) belongs to: its top directory, or internal/NAME.
func layer(rel string) string {
	f := strings.SplitN(rel, "/", 3)
	if f[0] == "internal" && len(f) > 1 {
		return f[0] + "/" + f[1]
	}
	return f[0]
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
		top := layer(rel)
		bans, ok := forbidden[top]
		if !ok {
			continue
		}
		seen++
		for _, d := range p.Deps {
			if !strings.HasPrefix(d, module+"/") {
				continue
			}
			dtop := layer(strings.TrimPrefix(d, module+"/"))
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

// unsafeFileAllowed reports whether a Go file of this name may import
// "unsafe": only files named *_unsafe.go (or *_unsafe_test.go for tests), so
// that a reviewer finds every use of it by name (STYLE.md, practice 3).
func unsafeFileAllowed(name string) bool {
	base := filepath.Base(name)
	return strings.HasSuffix(base, "_unsafe.go") || strings.HasSuffix(base, "_unsafe_test.go")
}

// unsafeViolation parses the imports of one Go file and returns an error
// when it imports "unsafe" and its name does not allow it.
func unsafeViolation(name string, src []byte) error {
	f, err := parser.ParseFile(token.NewFileSet(), name, src, parser.ImportsOnly)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	for _, imp := range f.Imports {
		if imp.Path.Value == `"unsafe"` && !unsafeFileAllowed(name) {
			return fmt.Errorf("%s imports unsafe: move that code into a file named *_unsafe.go", name)
		}
	}
	return nil
}

func TestUnsafeViolation(t *testing.T) {
	for _, c := range []struct {
		name, src string
		bad       bool
	}{
		{"pump/iov_unsafe.go", "package pump\nimport \"unsafe\"\n", false},
		{"pump/iov_unsafe_test.go", "package pump\nimport \"unsafe\"\n", false},
		{"pump/loop.go", "package pump\nimport \"unsafe\"\n", true},
		{"pump/loop_test.go", "package pump\nimport (\n\t\"os\"\n\tu \"unsafe\"\n)\n", true},
		{"pump/unsafe.go", "package pump\nimport _ \"unsafe\"\n", true},
		{"pump/loop.go", "package pump\nimport \"os\"\n", false},
		{"pump/not_unsafe.txt.go", "package pump\n// import \"unsafe\"\n", false},
	} {
		err := unsafeViolation(c.name, []byte(c.src))
		if (err != nil) != c.bad {
			t.Errorf("%s %q: got %v, want a violation: %v", c.name, c.src, err, c.bad)
		}
	}
}

// TestUnsafeOnlyInUnsafeFiles checks every Go file of the module, production
// and test code, whatever its build tags.
func TestUnsafeOnlyInUnsafeFiles(t *testing.T) {
	checked := 0
	err := filepath.WalkDir(".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if n := d.Name(); p != "." && (strings.HasPrefix(n, ".") || n == "testdata" || n == "vendor") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(p, ".go") {
			return nil
		}
		src, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		checked++
		if err := unsafeViolation(p, src); err != nil {
			t.Error(err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked < 50 {
		t.Fatalf("checked only %d Go files: not run from the module root?", checked)
	}
}
