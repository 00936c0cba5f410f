package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/treetx/treetx/internal/testenv"
	"github.com/treetx/treetx/internal/treeimage"
)

// dropIn installs scripts/cvs-atomic as "cvs" in a new directory and
// returns the environment that puts it first in PATH, the treetx binary
// next, then the test's PATH (the real cvs).
func dropIn(t *testing.T, home string, extra ...string) []string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "bin")
	if err := os.Mkdir(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(cvsScript(t, "cvs-atomic"), filepath.Join(bin, "cvs")); err != nil {
		t.Fatal(err)
	}
	path := strings.Join([]string{bin, filepath.Dir(treetxPath), os.Getenv("PATH")}, string(os.PathListSeparator))
	return append(cvsEnviron(home, "PATH="+path), extra...)
}

// runDropIn runs "cvs ARGS" through the drop-in (found in env's PATH) in
// dir, and returns its combined output and exit status.
func runDropIn(t *testing.T, dir string, env []string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command("cvs", args...)
	for _, kv := range env {
		if p, ok := strings.CutPrefix(kv, "PATH="); ok {
			// exec.Command looks cvs up in the test's PATH: use env's.
			for _, d := range filepath.SplitList(p) {
				if c := filepath.Join(d, "cvs"); exists(c) {
					cmd.Path = c
					break
				}
			}
		}
	}
	cmd.Dir, cmd.Env = dir, env
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode()
	} else if err != nil {
		t.Fatalf("cvs %q through the drop-in: %v", args, err)
	}
	return string(out), 0
}

// TestCVSDropInDecides: which invocations scripts/cvs-atomic wraps, and on
// which repository, with a fake real cvs and a fake treetx that record
// their arguments.
func TestCVSDropInDecides(t *testing.T) {
	t.Parallel()
	r := newCVSRepo(t, cvsSmall)
	other := filepath.Join(r.base, "other")
	log := filepath.Join(r.base, "log")
	fakes := filepath.Join(r.base, "fakes")
	writeFiles(t, fakes, map[string]string{
		"cvs":    "#!/bin/sh\necho \"cvs $*\" >> \"$LOG\"\n",
		"treetx": "#!/bin/sh\necho \"treetx $1 $2 $3\" >> \"$LOG\"\nshift 3\nexec \"$@\"\n",
	})
	for _, f := range []string{"cvs", "treetx"} {
		if err := os.Chmod(filepath.Join(fakes, f), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	env := dropIn(t, r.base, "LOG="+log, "TREETX_REAL_CVS="+filepath.Join(fakes, "cvs"), "TREETX="+filepath.Join(fakes, "treetx"), "CVSROOT="+other)
	root, m1 := r.root, filepath.Join(r.work, "m1")
	tests := []struct {
		dir  string
		args []string
		root string // the repository wrapped; "": passed through
	}{
		{m1, []string{"-d", root, "rtag", "X", "m1"}, root},
		{m1, []string{"-Qd" + root, "tag", "X"}, root},
		{m1, []string{"-d:local:" + root + "/", "commit", "-m", "x"}, root},
		{m1, []string{"-z", "3", "-q", "ci", "-m", "x"}, root}, // CVS/Root, not $CVSROOT
		{m1, []string{"-s", "V=1", "admin", "-kb", "f1.c"}, root},
		{m1, []string{"import", "-m", "x", "mod", "vendor", "start"}, other}, // $CVSROOT: import ignores CVS/Root
		{m1, []string{"--allow-root", "/x", "-T", "/tmp", "watch", "on"}, root},
		{m1, []string{"-e", "vi", "edit", "f1.c"}, root},
		{m1, []string{"add", "-m", "new", "d1"}, root},
		{m1, []string{"add", "f1.c"}, ""},
		{m1, []string{"checkout", "m1"}, ""},
		{m1, []string{"-d", root, "update", "-d"}, ""},
		{m1, []string{"--version"}, ""},
		{m1, []string{"-H", "commit"}, ""},
		{m1, []string{"--help", "tag"}, ""},
		{m1, []string{"-d", ":pserver:anon@example.invalid:/cvsroot", "commit", "-m", "x"}, ""},
		{m1, []string{"-d", ":fork:" + root, "commit", "-m", "x"}, ""},
		{r.base, []string{"commit", "-m", "x"}, other},
	}
	for _, tt := range tests {
		os.Remove(log)
		out, code := runDropIn(t, tt.dir, env, tt.args...)
		if code != 0 {
			t.Errorf("cvs %q: exit %d\n%s", tt.args, code, out)
			continue
		}
		b, _ := os.ReadFile(log)
		want := "cvs " + strings.Join(tt.args, " ") + "\n"
		if tt.root != "" {
			want = fmt.Sprintf("treetx run %s --\ncvs -d %s %s\n", tt.root, tt.root, strings.Join(tt.args, " "))
		}
		if string(b) != want {
			t.Errorf("cvs %q in %s ran:\n%swant:\n%s", tt.args, tt.dir, b, want)
		}
	}
}

// TestCVSDropIn: scripts/cvs-atomic, first in PATH as "cvs", with the real
// cvs and treetx.
func TestCVSDropIn(t *testing.T) {
	t.Parallel()
	testenv.Require(t, testenv.CVS)

	t.Run("a failing rtag leaves the repository unchanged", func(t *testing.T) {
		t.Parallel()
		r := newCVSRepo(t, cvsSmall)
		r.editAdmin(t, "taginfo", `^m1/d3 sh -c "echo taginfo: refusing %p >&2; exit 1"`+"\n")
		before := capture(t, r.root)
		c := r.doc(t, "cvs -d /srv/cvsroot rtag REL_2 m1/d1 m1/d2 m1/d3", "")
		out, code := runDropIn(t, r.work, dropIn(t, r.base), c.argv[1:]...)
		if code != 1 {
			t.Errorf("exit %d, want 1:\n%s", code, out)
		}
		contains(t, "output", out, "taginfo: refusing m1/d3", "treetx: command exited with status 1: rolled back")
		treeimage.AssertEqual(t, "before", before, "after", capture(t, r.root))
		noLeftovers(t, r.parent, "tree")
		r.check(t, r.files)
	})

	t.Run("a checkout passes through", func(t *testing.T) {
		t.Parallel()
		r := newCVSRepo(t, cvsSmall)
		co := t.TempDir()
		c := r.doc(t, "cvs -d /srv/cvsroot checkout m2", co)
		if out, code := runDropIn(t, co, dropIn(t, r.base), c.argv[1:]...); code != 0 {
			t.Fatalf("exit %d:\n%s", code, out)
		}
		if exists(filepath.Join(r.parent, lockName("tree"))) {
			t.Errorf("the checkout went through treetx")
		}
		got, err := readCheckout(co)
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]string{}
		for p, c := range r.files {
			if strings.HasPrefix(p, "m2/") {
				want[p] = c
			}
		}
		diffFiles(t, "a checkout through the drop-in", want, got)
	})

	t.Run("a commit in a working copy", func(t *testing.T) {
		t.Parallel()
		r := newCVSRepo(t, cvsSmall)
		other := r.copy(t)
		beforeOther := capture(t, other.root)
		r.appendTo(t, "/* through the drop-in */\n", "m1/d1/f1.c", "m1/d3/d4/f2.c")
		// CVS/Root names r, $CVSROOT the other: cvs commits to r.
		c := r.doc(t, `cvs commit -m "fix"`, "m1")
		out, code := runDropIn(t, filepath.Join(r.work, "m1"), dropIn(t, r.base, "CVSROOT="+other.root), c.argv[1:]...)
		if code != 0 {
			t.Fatalf("exit %d:\n%s", code, out)
		}
		if !exists(filepath.Join(r.parent, lockName("tree"))) {
			t.Errorf("the commit did not go through treetx")
		}
		noLeftovers(t, r.parent, "tree")
		r.check(t, r.files)
		treeimage.AssertEqual(t, "the other before", beforeOther, "after", capture(t, other.root))
	})
}
