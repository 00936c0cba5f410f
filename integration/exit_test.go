package integration

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/treetx/treetx/internal/treeimage"
)

// TestExitStatusPassesThrough: COMMAND's status is treetx's; death by
// signal N is 128+N; a command that cannot run is 127 (not found) or 126
// (not executable), and then treetx touches nothing, not even the parent.
func TestExitStatusPassesThrough(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		command func(t *testing.T, dir string) []string // dir: a scratch directory
		want    int
		started bool // the transaction began (the lock file may appear)
	}{
		{"exit 0", fixed(script("exit 0")), 0, true},
		{"exit 1", fixed(script("exit 1")), 1, true},
		{"exit 42", fixed(script("exit 42")), 42, true},
		{"exit 255", fixed(script("exit 255")), 255, true},
		{"killed by SIGKILL", fixed(script("kill -9 $$")), 137, true},
		{"killed by SIGUSR1", fixed(script("kill -USR1 $$")), 138, true},
		{"killed by SIGSEGV", fixed(script("kill -SEGV $$")), 139, true},
		{"not found in PATH", fixed([]string{"treetx-no-such-command-3f9a"}), 127, false},
		{"not found by path", func(t *testing.T, dir string) []string { return []string{filepath.Join(dir, "nope")} }, 127, false},
		{"file without x bit", func(t *testing.T, dir string) []string {
			p := filepath.Join(dir, "noexec.sh")
			if err := os.WriteFile(p, []byte("#!/bin/sh\nexit 0\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			return []string{p}
		}, 126, false},
		{"directory", func(t *testing.T, dir string) []string { return []string{dir} }, 126, false},
		{"bad interpreter", func(t *testing.T, dir string) []string {
			p := filepath.Join(dir, "badinterp.sh")
			if err := os.WriteFile(p, []byte("#!/nonexistent/interpreter\nexit 0\n"), 0o755); err != nil {
				t.Fatal(err)
			}
			return []string{p}
		}, 127, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			parent, tree := newTree(t, map[string]string{"f": "f\n", "d/g": "g\n", "e/": ""})
			before, names := capture(t, tree), listing(t, parent)
			r := treetx(t, nil, runArgs(tree, tt.command(t, t.TempDir()))...)
			wantCode(t, r, tt.want)
			treeimage.AssertEqual(t, "before", before, "after", capture(t, tree))
			if tt.started {
				sameListing(t, parent, names, lockName("tree"))
			} else {
				sameListing(t, parent, names)
				if r.stderr == "" {
					t.Errorf("stderr is empty: it must say why the command did not run")
				}
			}
		})
	}
}

func fixed(argv []string) func(*testing.T, string) []string {
	return func(*testing.T, string) []string { return argv }
}

// TestUsageErrors: a bad command line exits 64 with one line on stderr and
// changes nothing.
func TestUsageErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		args func(tree, other string) []string
		want string // in stderr
	}{
		{"no --", func(tree, _ string) []string { return []string{"run", tree, "true"} }, "--"},
		{"nothing after --", func(tree, _ string) []string { return []string{"run", tree, "--"} }, "no command"},
		{"no DIR", func(string, string) []string { return []string{"run", "--", "true"} }, "DIR"},
		{"lock: two DIRs", func(tree, other string) []string { return []string{"lock", tree, other, "--", "true"} }, "one DIR"},
		{"run: no DIR", func(_, _ string) []string { return []string{"run", "--", "true"} }, "at least one DIR"},
		{"unknown flag", func(tree, _ string) []string { return []string{"run", "--no-such-flag", tree, "--", "true"} }, "no-such-flag"},
		{"bad --lock-timeout", func(tree, _ string) []string { return []string{"run", "--lock-timeout", "soon", tree, "--", "true"} }, "lock-timeout"},
		{"negative --lock-timeout", func(tree, _ string) []string { return []string{"run", "--lock-timeout", "-1s", tree, "--", "true"} }, "lock-timeout"},
		{"negative -w seconds", func(tree, _ string) []string { return []string{"run", "-w", "-1", tree, "--", "true"} }, "lock-timeout"},
		{"-w not a number", func(tree, _ string) []string { return []string{"run", "-w", "1.2.3", tree, "--", "true"} }, "seconds"},
		{"-n and -w", func(tree, _ string) []string { return []string{"run", "-n", "-w", "5", tree, "--", "true"} }, "exclude each other"},
		{"lock -n and --lock-timeout", func(tree, _ string) []string {
			return []string{"lock", "--lock-timeout", "0", "-n", tree, "--", "true"}
		}, "exclude each other"},
		{"-E 256", func(tree, _ string) []string { return []string{"run", "-E", "256", tree, "--", "true"} }, "0 to 255"},
		{"lock --conflict-exit-code -1", func(tree, _ string) []string { return []string{"lock", "--conflict-exit-code=-1", tree, "--", "true"} }, "0 to 255"},
		{"-E not a number", func(tree, _ string) []string { return []string{"lock", "-E", "x", tree, "--", "true"} }, "conflict-exit-code"},
		{"lock -s and -x", func(tree, _ string) []string { return []string{"lock", "-s", "-x", tree, "--", "true"} }, "exclude each other"},
		{"-q and -v", func(tree, _ string) []string { return []string{"run", "-q", "-v", tree, "--", "true"} }, "exclude each other"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			parent, tree := newTree(t, map[string]string{"f": "f\n"})
			other := filepath.Join(parent, "other")
			if err := os.Mkdir(other, 0o755); err != nil {
				t.Fatal(err)
			}
			before, names := capture(t, tree), listing(t, parent)
			marker := filepath.Join(t.TempDir(), "ran")
			args := tt.args(tree, other)
			// Where a command is given, make it leave a mark if it runs.
			for i, a := range args {
				if a == "true" {
					args[i] = "touch"
					args = append(args[:i+1], marker)
					break
				}
			}
			r := treetx(t, nil, args...)
			wantCode(t, r, 64)
			oneLine(t, r.stderr, tt.want)
			if exists(marker) {
				t.Errorf("the command ran")
			}
			treeimage.AssertEqual(t, "before", before, "after", capture(t, tree))
			sameListing(t, parent, names)
		})
	}
}

// TestCommandGetsStreamsEnvironmentAndDirectory: COMMAND runs with treetx's
// standard streams, environment and working directory.
func TestCommandGetsStreamsEnvironmentAndDirectory(t *testing.T) {
	t.Parallel()
	_, tree := newTree(t, map[string]string{"f": "f\n"})
	out, cwd := t.TempDir(), t.TempDir()
	s := `cat > "$O/stdin"; echo to-stdout; echo to-stderr >&2; pwd > "$O/pwd"; printf %s "$TREETX_IT_VAR" > "$O/env"`
	r := invoke(t, invocation{args: runArgs(tree, script(s)), env: append(env(tree, out), "TREETX_IT_VAR=v a l"), dir: cwd, stdin: "from stdin\n"})
	wantCode(t, r, 0)
	if r.stdout != "to-stdout\n" {
		t.Errorf("stdout = %q, want the command's", r.stdout)
	}
	if r.stderr != "to-stderr\n" {
		t.Errorf("stderr = %q, want the command's only", r.stderr)
	}
	for file, want := range map[string]string{"stdin": "from stdin\n", "pwd": cwd + "\n", "env": "v a l"} {
		if b, err := os.ReadFile(filepath.Join(out, file)); err != nil || string(b) != want {
			t.Errorf("the command's %s = %q, %v; want %q", file, b, err, want)
		}
	}
}
