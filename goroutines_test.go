package vserial_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"
)

// TestEveryGoroutineIsGuarded checks that each go statement in production
// code starts a function whose first statement is `defer guard.Recover()`
// (package internal/guard: a panic in any goroutine is logged and gets the
// agent's last gasp before the process dies). A go statement may start a
// function literal, or a function or method of the same package, named
// directly; every declaration of that name must then begin with the defer.
// Test files, test-support packages (…test/) and tests/ are not checked.
func TestEveryGoroutineIsGuarded(t *testing.T) {
	fset, pkgs := productionFiles(t)
	checked := 0
	for dir, files := range pkgs {
		checked += checkGuarded(t, fset, dir, files)
	}
	if checked < 10 {
		t.Fatalf("found only %d go statements: the walk missed the production packages", checked)
	}
}

// productionFiles parses the production Go files of the module, by
// directory. Test files, test-support packages (…test/), tests/ and
// examples/ are left out.
func productionFiles(t *testing.T) (*token.FileSet, map[string][]*ast.File) {
	t.Helper()
	pkgs := map[string][]*ast.File{} // by directory
	fset := token.NewFileSet()
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() {
			if path != "." && (strings.HasPrefix(name, ".") || name == "testdata" || name == "tests" || name == "examples" || strings.HasSuffix(name, "test")) {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			return err
		}
		dir := filepath.Dir(path)
		pkgs[dir] = append(pkgs[dir], f)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return fset, pkgs
}

// checkGuarded reports the unguarded go statements of one package and
// returns how many go statements it saw.
func checkGuarded(t *testing.T, fset *token.FileSet, dir string, files []*ast.File) int {
	decls := map[string][]*ast.FuncDecl{}
	for _, f := range files {
		for _, d := range f.Decls {
			if fd, ok := d.(*ast.FuncDecl); ok && fd.Body != nil {
				decls[fd.Name.Name] = append(decls[fd.Name.Name], fd)
			}
		}
	}
	n := 0
	for _, f := range files {
		ast.Inspect(f, func(node ast.Node) bool {
			g, ok := node.(*ast.GoStmt)
			if !ok {
				return true
			}
			n++
			pos := fset.Position(g.Pos())
			var bodies []*ast.BlockStmt
			var target string
			switch fn := g.Call.Fun.(type) {
			case *ast.FuncLit:
				bodies, target = []*ast.BlockStmt{fn.Body}, "the function literal"
			case *ast.Ident:
				target = fn.Name
			case *ast.SelectorExpr:
				target = fn.Sel.Name
			default:
				t.Errorf("%s: go statement of a %T: start a function literal or a named function", pos, fn)
				return true
			}
			if bodies == nil {
				for _, d := range decls[target] {
					bodies = append(bodies, d.Body)
				}
				if len(bodies) == 0 {
					t.Errorf("%s: go %s(...): no function of that name in %s to check; start a function literal that defers guard.Recover()", pos, target, dir)
				}
			}
			for _, b := range bodies {
				if !startsWithGuard(b) {
					t.Errorf("%s: the goroutine started here (%s) does not begin with `defer guard.Recover()`", pos, target)
				}
			}
			return true
		})
	}
	return n
}

func startsWithGuard(b *ast.BlockStmt) bool {
	if len(b.List) == 0 {
		return false
	}
	d, ok := b.List[0].(*ast.DeferStmt)
	if !ok || len(d.Call.Args) != 0 {
		return false
	}
	sel, ok := d.Call.Fun.(*ast.SelectorExpr)
	if !ok || sel.Sel.Name != "Recover" {
		return false
	}
	x, ok := sel.X.(*ast.Ident)
	return ok && x.Name == "guard"
}
