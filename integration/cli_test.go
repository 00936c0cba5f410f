package integration

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/treetx/treetx/internal/testenv"
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
	git := testenv.Tool(t, "git")
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

// TestLockWaitFlags: the flock(1)-style forms of the lock's wait, on run and
// lock, while another lock holds DIR: seconds (fractional) as well as
// durations, -n, and --conflict-exit-code (-E) for the lock not had.
func TestLockWaitFlags(t *testing.T) {
	t.Parallel()
	parent, tree := newTree(t, map[string]string{"f": "f\n"})
	out := t.TempDir()
	holder := start(t, invocation{args: lockArgs(tree, script(holdScript)), env: append(env(tree, out), "N=h", "THEN=true")})
	waitForFile(t, holder, filepath.Join(out, "started-h"))
	before, names := capture(t, tree), listing(t, parent)
	tests := []struct {
		flags    []string
		code     int
		min, max time.Duration
	}{
		{[]string{"-w", "0.3"}, 75, 300 * time.Millisecond, 5 * time.Second},
		{[]string{"--lock-timeout", ".3"}, 75, 300 * time.Millisecond, 5 * time.Second},
		{[]string{"-w", "1"}, 75, time.Second, 6 * time.Second},
		{[]string{"-w", "300ms"}, 75, 300 * time.Millisecond, 5 * time.Second},
		{[]string{"-n"}, 75, 0, time.Second},
		{[]string{"--nonblock"}, 75, 0, time.Second},
		{[]string{"-n", "-E", "3"}, 3, 0, time.Second},
		{[]string{"-w", "0.2", "--conflict-exit-code", "0"}, 0, 200 * time.Millisecond, 5 * time.Second},
		{[]string{"-n", "-E", "75"}, 75, 0, time.Second},
	}
	for _, verb := range []string{"run", "lock"} {
		for _, tt := range tests {
			t.Run(verb+" "+strings.Join(tt.flags, " "), func(t *testing.T) {
				marker := filepath.Join(t.TempDir(), "ran")
				args := append(append([]string{verb}, tt.flags...), tree, "--", "touch", marker)
				r := treetx(t, nil, args...)
				wantCode(t, r, tt.code)
				oneLine(t, r.stderr, "is held by pid "+strconv.Itoa(holder.pid()))
				if r.elapsed < tt.min || r.elapsed > tt.max {
					t.Errorf("gave up after %v, want between %v and %v", r.elapsed, tt.min, tt.max)
				}
				if exists(marker) {
					t.Errorf("the command ran without the lock")
				}
			})
		}
	}
	t.Run("lock -s -n", func(t *testing.T) {
		r := treetx(t, nil, lockArgs(tree, []string{"true"}, "-s", "-n")...)
		wantCode(t, r, 75)
	})
	treeimage.AssertEqual(t, "while held", before, "after", capture(t, tree))
	sameListing(t, parent, names)
	if err := os.WriteFile(filepath.Join(out, "release"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	wantCode(t, holder.wait(t), 0)
	// Free, -w 10 and -n take the lock at once.
	for _, flags := range [][]string{{"-w", "10"}, {"-n"}} {
		marker := filepath.Join(t.TempDir(), "ran")
		wantCode(t, treetx(t, nil, runArgs(tree, []string{"touch", marker}, flags...)...), 0)
		if !exists(marker) {
			t.Errorf("run %q: the command did not run", flags)
		}
	}
}

// TestLockSharedShortForms: -s takes the lock shared (two readers at once),
// -x exclusive (kept out by a reader).
func TestLockSharedShortForms(t *testing.T) {
	t.Parallel()
	_, tree := newTree(t, map[string]string{"f": "f\n"})
	out := t.TempDir()
	reader := start(t, invocation{args: lockArgs(tree, script(holdScript), "-s"), env: append(env(tree, out), "N=r", "THEN=true")})
	waitForFile(t, reader, filepath.Join(out, "started-r"))
	marker := filepath.Join(out, "second-reader")
	wantCode(t, treetx(t, nil, lockArgs(tree, []string{"touch", marker}, "-s", "-n")...), 0)
	if !exists(marker) {
		t.Errorf("a second shared reader did not run beside the first")
	}
	r := treetx(t, nil, lockArgs(tree, []string{"touch", filepath.Join(out, "writer")}, "-x", "-n")...)
	wantCode(t, r, 75)
	if exists(filepath.Join(out, "writer")) {
		t.Errorf("-x ran beside a reader")
	}
	if err := os.WriteFile(filepath.Join(out, "release"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	wantCode(t, reader.wait(t), 0)
}

// TestNotADirectory: every command given a regular file (or a symlink to
// one) for DIR refuses it the same way: 125, "not a directory", nothing
// made beside it.
func TestNotADirectory(t *testing.T) {
	t.Parallel()
	parent := t.TempDir()
	file := filepath.Join(parent, "file")
	if err := os.WriteFile(file, []byte("data\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("file", filepath.Join(parent, "link")); err != nil {
		t.Fatal(err)
	}
	names := listing(t, parent)
	marker := filepath.Join(t.TempDir(), "ran")
	for _, name := range []string{"file", "link"} {
		dir := filepath.Join(parent, name)
		for _, args := range [][]string{
			{"run", dir, "--", "touch", marker},
			{"lock", dir, "--", "touch", marker},
			{"lock", "--shared", dir, "--", "touch", marker},
			{"status", dir},
			{"status", "--json", dir},
			{"recover", dir},
			{"recover", "--dry-run", dir},
			{"recover", "--json", dir},
		} {
			label := strings.NewReplacer(dir, name, marker, "M").Replace(strings.Join(args, " "))
			t.Run(label, func(t *testing.T) {
				r := treetx(t, nil, args...)
				wantCode(t, r, 125)
				oneLine(t, r.stderr, dir+": not a directory")
				if slices.Contains(args, "--json") {
					var rep struct{ State, Error string }
					if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil || rep.State != "error" || !strings.Contains(rep.Error, "not a directory") {
						t.Errorf("stdout = %q (%v), want an object with state error", r.stdout, err)
					}
				} else if r.stdout != "" {
					t.Errorf("stdout = %q, want nothing", r.stdout)
				}
			})
		}
	}
	if exists(marker) {
		t.Errorf("a command ran")
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "data\n" {
		t.Errorf("the file = %q, %v", b, err)
	}
	sameListing(t, parent, names)
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
	contains(t, "stderr", r.stderr, `msg=step step=C3 do="journal commit"`)
	for _, args := range [][]string{{"status", "-v", tree}, {"recover", "--verbose", tree}, {"gc", "-v", tree}, {"-v", "status", tree}} {
		r := treetx(t, nil, args...)
		wantCode(t, r, 64)
		oneLine(t, r.stderr, "unknown")
	}
}

// TestManPages: treetx man DIR writes a page per command (not the hidden
// ones), dated SOURCE_DATE_EPOCH; man renders them.
func TestManPages(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "man1")
	r := treetx(t, []string{"SOURCE_DATE_EPOCH=86400"}, "man", dir)
	wantCode(t, r, 0)
	pages := listing(t, dir)
	for _, want := range []string{"treetx.1", "treetx-run.1", "treetx-lock.1", "treetx-status.1", "treetx-recover.1", "treetx-gc.1", "treetx-version.1"} {
		if !slices.Contains(pages, want) {
			t.Errorf("no %s among %q", want, pages)
		}
	}
	for _, hidden := range []string{"treetx-man.1", "treetx-_cleanup.1"} {
		if slices.Contains(pages, hidden) {
			t.Errorf("a page for a hidden command: %s", hidden)
		}
	}
	b, err := os.ReadFile(filepath.Join(dir, "treetx-run.1"))
	if err != nil {
		t.Fatal(err)
	}
	page := string(b)
	contains(t, "treetx-run.1", page, `.TH "TREETX" "1" "Jan 1970"`, "--lock-timeout", "--conflict-exit-code", "Exit status")
	if strings.Contains(page, "Auto generated by spf13/cobra") {
		t.Errorf("treetx-run.1 carries cobra's tag")
	}
	man := testenv.Tool(t, "man")
	cmd := exec.Command(man, "-l", filepath.Join(dir, "treetx-run.1"))
	cmd.Env = append(os.Environ(), "MANPAGER=cat", "PAGER=cat", "MANWIDTH=80")
	text, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("man -l treetx-run.1: %v\n%s", err, text)
	}
	// man justifies lines with extra spaces: compare words.
	words := strings.Join(strings.Fields(string(text)), " ")
	contains(t, "man -l treetx-run.1", words, "treetx run [flags] DIR [DIR...] -- COMMAND [ARG...]", "Exit status")
	wantCode(t, treetx(t, nil, "man"), 64)
}

// TestCompletion: cobra's completion scripts, and DIR arguments completed
// as directories only (directive 16, ShellCompDirectiveFilterDirs), the
// command after DIR as files (0, the default).
func TestCompletion(t *testing.T) {
	t.Parallel()
	for _, shell := range []string{"bash", "zsh", "fish"} {
		r := treetx(t, nil, "completion", shell)
		wantCode(t, r, 0)
		if !strings.Contains(r.stdout, "treetx") {
			t.Errorf("completion %s printed no script:\n%s", shell, r.stdout)
		}
		if shell == "bash" {
			if bash, err := exec.LookPath("bash"); err == nil {
				check := exec.Command(bash, "-n")
				check.Stdin = strings.NewReader(r.stdout)
				if out, err := check.CombinedOutput(); err != nil {
					t.Errorf("bash -n on the bash completion: %v\n%s", err, out)
				}
			}
		}
	}
	for _, tt := range []struct {
		args      []string
		directive string
	}{
		{[]string{"run", ""}, ":16"},
		{[]string{"run", "-w", "5", ""}, ":16"},
		{[]string{"run", "/tmp", ""}, ":0"},
		{[]string{"run", "/tmp", "--", ""}, ":0"},
		{[]string{"lock", "-s", ""}, ":16"},
		{[]string{"status", ""}, ":16"},
		{[]string{"recover", ""}, ":16"},
		{[]string{"recover", "/tmp", ""}, ":16"},
		{[]string{"gc", ""}, ":16"},
	} {
		r := treetx(t, nil, append([]string{"__complete"}, tt.args...)...)
		wantCode(t, r, 0)
		lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
		if last := lines[len(lines)-1]; last != tt.directive {
			t.Errorf("__complete %q: directive %s, want %s\n%s", tt.args, last, tt.directive, r.stdout)
		}
	}
}

// TestQuiet: with -q, an ordinary outcome (committed, rolled back) leaves
// stderr to the command alone; what needs attention is still said: the
// lock not had, lost content, a command not found.
func TestQuiet(t *testing.T) {
	t.Parallel()
	t.Run("committed", func(t *testing.T) {
		t.Parallel()
		_, tree := newTree(t, inPlaceFiles)
		// Written in place and committed: a warning without -q.
		r := treetx(t, env(tree, t.TempDir()), runArgs(tree, script(inPlaceScript+"echo own >&2"), "-q")...)
		wantCode(t, r, 0)
		if r.stderr != "own\n" {
			t.Errorf("stderr = %q, want the command's only", r.stderr)
		}
	})
	t.Run("rolled back", func(t *testing.T) {
		t.Parallel()
		_, tree := newTree(t, map[string]string{"f": "f\n"})
		before := capture(t, tree)
		r := treetx(t, env(tree, t.TempDir()), runArgs(tree, script(`touch "$T/#cvs.lock" "$T/new"; exit 3`), "--quiet")...)
		wantCode(t, r, 3)
		if r.stderr != "" {
			t.Errorf("stderr = %q, want nothing", r.stderr)
		}
		treeimage.AssertEqual(t, "before", before, "after", capture(t, tree))
	})
	t.Run("lost content", func(t *testing.T) {
		t.Parallel()
		_, tree := newTree(t, inPlaceFiles)
		r := treetx(t, env(tree, t.TempDir()), runArgs(tree, script(inPlaceScript+"exit 1"), "-q")...)
		wantCode(t, r, 125)
		contains(t, "stderr", r.stderr, "lost old content: file")
	})
	t.Run("not found", func(t *testing.T) {
		t.Parallel()
		_, tree := newTree(t, map[string]string{"f": "f\n"})
		r := treetx(t, nil, runArgs(tree, []string{"treetx-no-such-command-3f9a"}, "-q")...)
		wantCode(t, r, 127)
		oneLine(t, r.stderr, "treetx-no-such-command-3f9a")
	})
	t.Run("lock not had", func(t *testing.T) {
		t.Parallel()
		_, tree := newTree(t, map[string]string{"f": "f\n"})
		out := t.TempDir()
		holder := start(t, invocation{args: lockArgs(tree, script(holdScript)), env: append(env(tree, out), "N=h", "THEN=true")})
		waitForFile(t, holder, filepath.Join(out, "started-h"))
		for _, args := range [][]string{
			runArgs(tree, []string{"true"}, "-q", "-n"),
			runArgs(tree, []string{"true"}, "-q", "-n", "-E", "0"),
			lockArgs(tree, []string{"true"}, "-q", "-n"),
			lockArgs(tree, []string{"true"}, "-q", "-n", "-E", "0"),
		} {
			r := treetx(t, nil, args...)
			oneLine(t, r.stderr, "is held by pid "+strconv.Itoa(holder.pid()))
		}
		if err := os.WriteFile(filepath.Join(out, "release"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		wantCode(t, holder.wait(t), 0)
		r := treetx(t, nil, lockArgs(tree, script("echo own >&2; exit 4"), "-q")...)
		wantCode(t, r, 4)
		if r.stderr != "own\n" {
			t.Errorf("lock -q: stderr = %q, want the command's only", r.stderr)
		}
	})
}
