package vserial_test

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"sort"
	"testing"
)

// maxFuncLines is the longest a production function may be, from its func
// keyword to its closing brace (issue 14: a reader should see a function
// whole; split a longer one into named steps).
const maxFuncLines = 80

// longFuncs returns "file:line name (N lines)" for each function of f
// longer than maxFuncLines.
func longFuncs(fset *token.FileSet, f *ast.File) []string {
	var out []string
	for _, d := range f.Decls {
		fd, ok := d.(*ast.FuncDecl)
		if !ok || fd.Body == nil {
			continue
		}
		start, end := fset.Position(fd.Pos()), fset.Position(fd.End())
		if n := end.Line - start.Line + 1; n > maxFuncLines {
			name := fd.Name.Name
			if fd.Recv != nil && len(fd.Recv.List) == 1 {
				name = fmt.Sprintf("(%s).%s", types(fd.Recv.List[0].Type), name)
			}
			out = append(out, fmt.Sprintf("%s:%d %s (%d lines)", start.Filename, start.Line, name, n))
		}
	}
	return out
}

// types prints a receiver type: T, *T, T[P].
func types(e ast.Expr) string {
	switch e := e.(type) {
	case *ast.StarExpr:
		return "*" + types(e.X)
	case *ast.IndexExpr:
		return types(e.X)
	case *ast.IndexListExpr:
		return types(e.X)
	case *ast.Ident:
		return e.Name
	}
	return "?"
}

// TestProductionFunctionsAreShort checks every function of production code
// (productionFiles: not tests, test-support packages, tests/ or examples/).
func TestProductionFunctionsAreShort(t *testing.T) {
	fset, pkgs := productionFiles(t)
	var long []string
	files := 0
	for _, fs := range pkgs {
		for _, f := range fs {
			files++
			long = append(long, longFuncs(fset, f)...)
		}
	}
	if files < 50 {
		t.Fatalf("found only %d production files: the walk missed the packages", files)
	}
	sort.Strings(long)
	for _, l := range long {
		t.Errorf("%s: over %d lines; split it into named steps", l, maxFuncLines)
	}
}

// The checker itself finds a long function and passes a short one.
func TestLongFuncsFindsALongFunction(t *testing.T) {
	body := ""
	for range maxFuncLines - 1 {
		body += "\tx++\n"
	}
	for _, c := range []struct {
		src  string
		long int
	}{
		{"package p\nfunc f() {\n\tx := 0\n" + body + "}\n", 1}, // 82 lines
		{"package p\nfunc f() {\n" + body[5:] + "}\n", 0},       // 80 lines
		{"package p\ntype T int\nfunc (*T) m() {\n\tx := 0\n" + body + "}\n", 1},
	} {
		fset := token.NewFileSet()
		f, err := parser.ParseFile(fset, "p.go", c.src, 0)
		if err != nil {
			t.Fatal(err)
		}
		if got := longFuncs(fset, f); len(got) != c.long {
			t.Errorf("longFuncs = %q, want %d", got, c.long)
		}
	}
}
