package integration

import (
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/treetx/treetx/internal/treeimage"
)

// TestUnknownCommand: a word that names no command is a usage error (64),
// with cobra's suggestion when one is close; nothing runs, nothing changes.
func TestUnknownCommand(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		args  func(tree, marker string) []string
		wants []string
	}{
		{"bogus", func(tree, _ string) []string { return []string{"bogus"} }, []string{`unknown command "bogus"`}},
		{"Run", func(tree, marker string) []string { return []string{"Run", tree, "--", "touch", marker} }, []string{`unknown command "Run"`, "did you mean run?"}},
		{"recovr", func(tree, _ string) []string { return []string{"recovr", tree} }, []string{`unknown command "recovr"`, "did you mean recover?"}},
		{"stat", func(tree, _ string) []string { return []string{"stat", tree} }, []string{"did you mean status?"}},
		{"completion tcsh", func(string, string) []string { return []string{"completion", "tcsh"} }, []string{`unknown command "tcsh"`, "treetx completion --help"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			parent, tree := newTree(t, map[string]string{"f": "f\n"})
			before, names := capture(t, tree), listing(t, parent)
			marker := filepath.Join(t.TempDir(), "ran")
			r := treetx(t, nil, tt.args(tree, marker)...)
			wantCode(t, r, 64)
			oneLine(t, r.stderr, tt.wants...)
			if r.stdout != "" {
				t.Errorf("stdout = %q, want nothing", r.stdout)
			}
			if exists(marker) {
				t.Errorf("the command ran")
			}
			treeimage.AssertEqual(t, "before", before, "after", capture(t, tree))
			sameListing(t, parent, names)
		})
	}
}

// TestUsageLines: every command's usage line is written by hand, without
// cobra's "[flags]" stuck at its end; every command has examples.
func TestUsageLines(t *testing.T) {
	t.Parallel()
	for _, cmd := range []string{"", "run", "lock", "status", "recover", "gc"} {
		t.Run(cmd, func(t *testing.T) {
			args := []string{"--help"}
			if cmd != "" {
				args = []string{cmd, "--help"}
			}
			r := treetx(t, nil, args...)
			wantCode(t, r, 0)
			usage := regexp.MustCompile(`(?m)^Usage:\n((?:  .*\n)+)`).FindStringSubmatch(r.stdout)
			if usage == nil {
				t.Fatalf("no Usage: section in\n%s", r.stdout)
			}
			for _, line := range strings.Split(strings.TrimSpace(usage[1]), "\n") {
				if strings.HasSuffix(line, "] [flags]") || strings.Count(line, "[flags]") > 1 {
					t.Errorf("usage line %q ends with a stray [flags]", line)
				}
			}
			if cmd != "" && !strings.Contains(r.stdout, "\nExamples:\n  treetx ") {
				t.Errorf("treetx %s --help has no examples:\n%s", cmd, r.stdout)
			}
		})
	}
}

// TestVerboseIsRunsFlag: -v logs the protocol's steps; it is a flag of run,
// the only command with steps to log, and other commands refuse it.
func TestVerboseIsRunsFlag(t *testing.T) {
	t.Parallel()
	_, tree := newTree(t, map[string]string{"f": "f\n"})
	r := treetx(t, nil, runArgs(tree, []string{"true"}, "-v")...)
	wantCode(t, r, 0)
	contains(t, "stderr", r.stderr, `msg=step do="journal commit"`)
	for _, args := range [][]string{{"status", "-v", tree}, {"recover", "--verbose", tree}, {"gc", "-v", tree}, {"-v", "status", tree}} {
		r := treetx(t, nil, args...)
		wantCode(t, r, 64)
		oneLine(t, r.stderr, "unknown")
	}
}
