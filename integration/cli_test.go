package integration

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
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

// TestVersion: --version, -V and version print the same lines; version
// --json the same as an object.
func TestVersion(t *testing.T) {
	t.Parallel()
	r := treetx(t, nil, "--version")
	wantCode(t, r, 0)
	if r.stderr != "" {
		t.Errorf("stderr = %q", r.stderr)
	}
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "treetx ") || !strings.HasPrefix(lines[1], "revision ") ||
		lines[2] != runtime.Version()+" "+runtime.GOOS+"/"+runtime.GOARCH {
		t.Errorf("--version printed:\n%s\nwant treetx VERSION, revision ..., %s %s/%s", r.stdout, runtime.Version(), runtime.GOOS, runtime.GOARCH)
	}
	for _, args := range [][]string{{"-V"}, {"version"}} {
		o := treetx(t, nil, args...)
		wantCode(t, o, 0)
		if o.stdout != r.stdout {
			t.Errorf("%q printed\n%s\nwant what --version printed:\n%s", args, o.stdout, r.stdout)
		}
	}
	j := treetx(t, nil, "version", "--json")
	wantCode(t, j, 0)
	var v struct {
		Version, Revision, Time, Go, Platform string
		Modified                              bool
	}
	if err := json.Unmarshal([]byte(j.stdout), &v); err != nil {
		t.Fatalf("version --json: %v\n%s", err, j.stdout)
	}
	if "treetx "+v.Version != lines[0] || v.Go != runtime.Version() || v.Platform != runtime.GOOS+"/"+runtime.GOARCH {
		t.Errorf("version --json = %+v, disagrees with\n%s", v, r.stdout)
	}
	wantCode(t, treetx(t, nil, "version", "extra"), 64)
}

// TestVersionFromVCS builds treetx with VCS stamping on, from this
// checkout: it reports git's HEAD, and "modified" when git status lists
// anything.
func TestVersionFromVCS(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("builds treetx again (-short)")
	}
	git := requireTool(t, "git")
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	head, err := exec.Command(git, "-C", root, "rev-parse", "HEAD").Output()
	if err != nil {
		t.Skipf("%s is not a git checkout: %v", root, err)
	}
	top, err := exec.Command(git, "-C", root, "rev-parse", "--show-toplevel").Output()
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(strings.TrimSpace(string(top)), ".git")); err != nil || !fi.IsDir() {
		t.Skipf("%s is a git worktree (.git is not a directory): go build does not stamp it", top)
	}
	bin := filepath.Join(t.TempDir(), "treetx")
	build := exec.Command("go", "build", "-buildvcs=true", "-o", bin, ".")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build -buildvcs=true: %v\n%s", err, out)
	}
	status, err := exec.Command(git, "-C", root, "status", "--porcelain").Output()
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "version", "--json").Output()
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		Version, Revision string
		Modified          bool
	}
	if err := json.Unmarshal(out, &v); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	rev := strings.TrimSpace(string(head))
	if v.Revision != rev || v.Modified != (len(status) > 0) {
		t.Errorf("version --json = %s\nwant revision %s, modified %v (git status: %q)", out, rev, len(status) > 0, status)
	}
	text, err := exec.Command(bin, "--version").Output()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(text), "revision "+rev) || strings.Contains(string(text), ", modified") != v.Modified {
		t.Errorf("--version =\n%s\nwant revision %s, modified %v", text, rev, v.Modified)
	}
}

// TestUsageLines: every command's usage line is written by hand, without
// cobra's "[flags]" stuck at its end; every command has examples.
func TestUsageLines(t *testing.T) {
	t.Parallel()
	for _, cmd := range []string{"", "run", "lock", "status", "recover", "gc", "version"} {
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
