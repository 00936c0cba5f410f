package integration

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// The commands of README.md's section "Using treetx with CVS and RCS" are
// the ones the tests run: a test takes a command as the README writes it
// (readmeCmd fails the test if the README does not hold it), and
// TestREADMECVSCommandsAreTested fails if the README holds a command that
// no test file holds.

const readmeCVSSection = "## Using treetx with CVS and RCS"

// readmeCVSLines returns the lines of the code blocks (indented by four
// spaces) of the README's CVS section, trimmed.
func readmeCVSLines(t *testing.T) []string {
	t.Helper()
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(b), "\n"+readmeCVSSection+"\n")
	if !ok {
		t.Fatalf("README.md has no section %q", readmeCVSSection)
	}
	if i := strings.Index(section, "\n## "); i >= 0 {
		section = section[:i]
	}
	var lines []string
	for _, l := range strings.Split(section, "\n") {
		if code, ok := strings.CutPrefix(l, "    "); ok && strings.TrimSpace(code) != "" {
			lines = append(lines, strings.TrimSpace(code))
		}
	}
	return lines
}

// readmeRunnable reports whether a README line is a command the tests must
// run: treetx, cvs or an RCS command (after NAME=VALUE settings), or the
// inetd line. Installation commands are not.
func readmeRunnable(line string) bool {
	words := strings.Fields(line)
	for len(words) > 0 && strings.Contains(words[0], "=") {
		words = words[1:]
	}
	if len(words) == 0 {
		return false
	}
	switch words[0] {
	case "treetx", "cvs", "ci", "co", "rcs", "cvspserver":
		return true
	}
	return false
}

// docCmd is a README command as a test runs it.
type docCmd struct {
	env  []string // the NAME=VALUE settings before the command
	argv []string
}

// readmeCmd takes the README command line (the test fails if the README's
// CVS section does not hold it), splits it into words as sh does (spaces;
// single and double quotes; NAME=VALUE words in front set the
// environment; an unquoted word with * is replaced by the paths it matches
// in dir, sorted), and replaces, in every word, each old string of
// replace (old, new, old, new...) by its new one.
func readmeCmd(t *testing.T, line, dir string, replace ...string) docCmd {
	t.Helper()
	if !slices.Contains(readmeCVSLines(t), line) {
		t.Fatalf("README.md's CVS section does not show the command %q", line)
	}
	r := strings.NewReplacer(replace...)
	var c docCmd
	for _, w := range shellWords(t, line) {
		word := r.Replace(w.text)
		if w.glob {
			matches, err := filepath.Glob(filepath.Join(dir, word))
			if err != nil || len(matches) == 0 {
				t.Fatalf("%q matches nothing in %s (%v)", word, dir, err)
			}
			for _, m := range matches {
				rel, _ := filepath.Rel(dir, m)
				c.argv = append(c.argv, rel)
			}
			continue
		}
		if len(c.argv) == 0 && strings.Contains(word, "=") && !w.quoted {
			c.env = append(c.env, word)
			continue
		}
		c.argv = append(c.argv, word)
	}
	return c
}

// after returns the words after "--": the command treetx runs.
func (c docCmd) after(t *testing.T) []string {
	t.Helper()
	i := slices.Index(c.argv, "--")
	if i < 0 {
		t.Fatalf("%q has no --", c.argv)
	}
	return c.argv[i+1:]
}

type shellWord struct {
	text         string
	quoted, glob bool
}

// shellWords splits a line as sh does, for the simple lines of the README.
func shellWords(t *testing.T, line string) []shellWord {
	t.Helper()
	var words []shellWord
	var cur *shellWord
	var quote rune
	for _, c := range line {
		switch {
		case quote != 0 && c == quote:
			quote = 0
		case quote != 0:
			cur.text += string(c)
		case c == ' ' || c == '\t':
			cur = nil
		default:
			if cur == nil {
				words = append(words, shellWord{})
				cur = &words[len(words)-1]
			}
			switch c {
			case '"', '\'':
				quote, cur.quoted = c, true
			case '*':
				cur.glob = true
				cur.text += string(c)
			default:
				cur.text += string(c)
			}
		}
	}
	if quote != 0 {
		t.Fatalf("unbalanced quote in %q", line)
	}
	return words
}

// TestREADMECVSCommandsAreTested: every command of the README's CVS section
// is a string literal of some other test file, where tests give it to
// readmeCmd or readmeInetd (which fail when the README does not hold it).
func TestREADMECVSCommandsAreTested(t *testing.T) {
	t.Parallel()
	fset := token.NewFileSet()
	files, err := filepath.Glob("*_test.go")
	if err != nil {
		t.Fatal(err)
	}
	used := map[string]bool{}
	for _, name := range files {
		if name == "cvs_readme_test.go" {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			if lit, ok := n.(*ast.BasicLit); ok && lit.Kind == token.STRING {
				if s, err := strconv.Unquote(lit.Value); err == nil {
					used[s] = true
				}
			}
			return true
		})
	}
	n := 0
	for _, line := range readmeCVSLines(t) {
		if !readmeRunnable(line) {
			continue
		}
		n++
		if !used[line] {
			t.Errorf("README.md shows a command no test runs: %s", line)
		}
	}
	if n < 10 {
		t.Errorf("README.md's CVS section shows %d commands; is it there?", n)
	}
}

// readmeInetd takes the README's inetd.conf line and returns the program
// inetd runs followed by the argument vector it gives it (argv[0] first),
// replaced as readmeCmd does.
func readmeInetd(t *testing.T, line string, replace ...string) []string {
	t.Helper()
	c := readmeCmd(t, line, "", replace...)
	// service socket-type protocol wait user program argv...
	if len(c.argv) < 7 || c.argv[0] != "cvspserver" {
		t.Fatalf("not an inetd.conf line for cvspserver: %q", line)
	}
	return c.argv[5:]
}
