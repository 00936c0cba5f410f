package recover

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/treetx/treetx/internal/fsys/fsystest"
	"github.com/treetx/treetx/internal/treeimage"
)

const (
	envChild = "TREETX_TEST_GC_CHILD" // the directory to collect
	envAfter = "TREETX_TEST_GC_AFTER" // crash after this step
)

// TestGCCrashChild is the victim of TestGCCrash: run alone in a child
// process with envChild set, it collects that directory through an FS that
// kills the process after step envAfter. (The package's TestMain belongs to
// script_test.go.) Without envChild it does nothing.
func TestGCCrashChild(t *testing.T) {
	dir := os.Getenv(envChild)
	if dir == "" {
		return
	}
	after, _ := strconv.Atoi(os.Getenv(envAfter))
	if _, err := GC(dir, GCOptions{Options: Options{FS: &fsystest.FS{CrashAfter: after}}}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(3)
	}
	os.Exit(0)
}

func TestLeftoverBase(t *testing.T) {
	tests := []struct {
		name, base string
		ok         bool
	}{
		{".#treetx.repo.journal", "repo", true},
		{".#treetx.repo.journal.tmp", "repo", true},
		{".#treetx.repo.meta", "repo", true},
		{".#treetx.repo.incomplete", "repo", true},
		{".#treetx.repo.complete", "repo", true},
		{".#treetx.repo.removing.0123456789abcdef", "repo", true},
		{".#treetx.repo.failed.0123456789abcdef", "repo", true},
		{".#treetx.a.b.journal", "a.b", true},
		{".#treetx.x.journal.journal", "x.journal", true},
		{".#treetx.x.failed.0123456789abcdef.removing.fedcba9876543210", "x.failed.0123456789abcdef", true},
		{".#treetx.repo.lock", "", false},
		{".#treetx.x.journal.lock", "", false},
		{".#treetx.repo.removing.0123", "", false},
		{".#treetx.repo.removing.0123456789ABCDEF", "", false},
		{".#treetx.repo.other", "", false},
		{".#treetx..journal", "", false},
		{"repo.journal", "", false},
	}
	for _, tt := range tests {
		base, ok := leftoverBase(tt.name)
		if base != tt.base || ok != tt.ok {
			t.Errorf("leftoverBase(%q) = %q, %v; want %q, %v", tt.name, base, ok, tt.base, tt.ok)
		}
	}
}

// gcFixture makes P/repo with a failed tree, an abandoned shadow, a tree
// being removed and stale files beside it.
func gcFixture(t *testing.T) (parent, dir string, img treeimage.Image) {
	t.Helper()
	parent = t.TempDir()
	dir = filepath.Join(parent, "repo")
	for p, content := range map[string]string{
		"repo/f": "f", "repo/d/g": "g",
		".#treetx.repo.failed.0123456789abcdef/f":   "bad",
		".#treetx.repo.failed.0123456789abcdef/d/g": "g",
		".#treetx.repo.incomplete/f":                "f",
		".#treetx.repo.incomplete/d/g":              "g",
		".#treetx.repo.removing.fedcba9876543210/x": "x",
		".#treetx.repo.meta":                        "# treetx manifest 1\n",
		".#treetx.repo.journal.tmp":                 "{",
	} {
		full := filepath.Join(parent, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return parent, dir, treeimage.MustCapture(t, dir, treeimage.Options{})
}

// TestGCRenamesBeforeDeleting: every tree that is not already under a
// removal name is renamed to one, and the parent fsynced, before anything
// in it is deleted.
func TestGCRenamesBeforeDeleting(t *testing.T) {
	parent, dir, img := gcFixture(t)
	f := &fsystest.FS{Record: true}
	r, err := GC(dir, GCOptions{Options: Options{FS: f}})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Removed) != 5 || !r.Done {
		t.Errorf("removed %v, done %v; want 5 names, done", r.Removed, r.Done)
	}
	ops := f.Ops()
	var log []string
	for _, op := range ops {
		log = append(log, op.String())
	}
	for _, tree := range []string{".#treetx.repo.failed.0123456789abcdef", ".#treetx.repo.incomplete"} {
		renamed, synced := false, false
		for _, op := range ops {
			switch {
			case op.Kind == "renameat2" && strings.HasSuffix(op.Path, "/"+tree):
				renamed = strings.Contains(op.Path2, ".#treetx.repo.removing.")
			case op.Kind == "fsync" && renamed:
				synced = true
			case strings.Contains(op.Path, "/"+tree+"/") || strings.HasSuffix(op.Path, "/"+tree) && op.Kind == "unlinkat":
				t.Errorf("%s: deleted under its own name:\n%s", op, strings.Join(log, "\n"))
			case strings.Contains(op.Path, ".#treetx.repo.removing.") && op.Kind == "unlinkat" && renamed && !synced:
				t.Errorf("%s: deleted before the rename was made durable:\n%s", op, strings.Join(log, "\n"))
			}
		}
		if !renamed || !synced {
			t.Errorf("%s: renamed %v, synced %v:\n%s", tree, renamed, synced, strings.Join(log, "\n"))
		}
	}
	left := leftovers(t, parent)
	if !slices.Equal(left, []string{".#treetx.repo.lock"}) {
		t.Errorf("left: %v", left)
	}
	treeimage.AssertEqual(t, "before", img, "after gc", treeimage.MustCapture(t, dir, treeimage.Options{}))
}

// TestGCCrash kills GC (in a child process, SIGKILL) after each of its
// steps: a tree is then whole under its own name or under a removal name;
// a second GC removes everything; the directory is never touched.
func TestGCCrash(t *testing.T) {
	_, dir0, _ := gcFixture(t)
	f := &fsystest.FS{}
	if _, err := GC(dir0, GCOptions{Options: Options{FS: f}}); err != nil {
		t.Fatal(err)
	}
	steps := f.Steps()
	for n := 1; n <= steps; n++ {
		parent, dir, img := gcFixture(t)
		cmd := exec.Command(os.Args[0], "-test.run=^TestGCCrashChild$")
		cmd.Env = append(os.Environ(), envChild+"="+dir, envAfter+"="+strconv.Itoa(n))
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != -1 {
			t.Fatalf("step %d of %d: the child was not killed: %v\n%s", n, steps, err, out)
		}
		for _, name := range leftovers(t, parent) {
			if name != ".#treetx.repo.failed.0123456789abcdef" && name != ".#treetx.repo.incomplete" {
				continue
			}
			// Both trees hold f and d/g: whole, or not under this name.
			var got []string
			des, _ := os.ReadDir(filepath.Join(parent, name))
			for _, de := range des {
				got = append(got, de.Name())
			}
			if _, err := os.Lstat(filepath.Join(parent, name, "d", "g")); len(got) != 2 || err != nil {
				t.Errorf("crash after step %d: %s is half deleted under its own name: %v", n, name, got)
			}
		}
		if _, err := GC(dir, GCOptions{}); err != nil {
			t.Errorf("crash after step %d: gc again: %v", n, err)
		}
		if left := leftovers(t, parent); !slices.Equal(left, []string{".#treetx.repo.lock"}) {
			t.Errorf("crash after step %d: left %v", n, left)
		}
		treeimage.AssertEqual(t, "before", img, fmt.Sprintf("after a crash at step %d and gc", n), treeimage.MustCapture(t, dir, treeimage.Options{}))
	}
	t.Logf("gc crash points: %d", steps)
}

// leftovers lists treetx's names in parent.
func leftovers(t *testing.T, parent string) []string {
	t.Helper()
	des, err := os.ReadDir(parent)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, de := range des {
		if strings.HasPrefix(de.Name(), ".#treetx.") && !strings.HasSuffix(de.Name(), ".gate") {
			names = append(names, de.Name())
		}
	}
	return names
}
