package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/treetx/treetx/internal/testenv"
	"github.com/treetx/treetx/internal/treeimage"
)

// dropIn installs scripts/cvs-atomic as "cvs" in a new directory and
// returns the environment that puts it first in PATH, the treetx binary
// next, then the test's PATH (the real cvs).
func dropIn(t testing.TB, home string, extra ...string) []string {
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
	ctx, cancel := context.WithTimeout(context.Background(), cvsTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "cvs", args...)
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
	if ctx.Err() != nil {
		t.Fatalf("cvs %q through the drop-in ran %v and was killed: it hangs\n%s", args, cvsTimeout, out)
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode()
	} else if err != nil {
		t.Fatalf("cvs %q through the drop-in: %v", args, err)
	}
	return string(out), 0
}

// fakeTreetx stands in for treetx in TestCVSDropInDecides: it records
// "run DIR" or "lock DIR" (lock-shared when shared) for each DIR it is
// given, in the order of their paths, "noisy" if -q is missing, then runs
// its command.
const fakeTreetx = `#!/bin/sh
what=$1
shift
quiet=noisy dirs=
while [ "$1" != -- ]; do
	case $1 in
	-q) quiet= ;;
	--shared) what=lock-shared ;;
	--copy) shift ;;
	-*) ;;
	*) dirs="$dirs$1
" ;;
	esac
	shift
done
shift
printf '%s' "$dirs" | sort | while IFS= read -r dir; do
	echo "$what $dir$quiet" >> "$LOG"
done
exec "$@"
`

// TestCVSDropInDecides: what scripts/cvs-atomic wraps around which
// invocation (a transaction, the shared lock, nothing) and on which trees,
// with a fake real cvs and a fake treetx that record their arguments. The
// real cvs always gets the command line as it was given.
func TestCVSDropInDecides(t *testing.T) {
	t.Parallel()
	r := newCVSRepo(t, cvsSmall)
	other := r.copy(t).root
	log := filepath.Join(r.base, "log")
	fakes := filepath.Join(r.base, "fakes")
	writeFiles(t, fakes, map[string]string{
		"cvs":    "#!/bin/sh\necho \"cvs $*\" >> \"$LOG\"\n",
		"treetx": fakeTreetx,
	})
	for _, f := range []string{"cvs", "treetx"} {
		if err := os.Chmod(filepath.Join(fakes, f), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	env := dropIn(t, r.base, "LOG="+log, "TREETX_REAL_CVS="+filepath.Join(fakes, "cvs"), "TREETX="+filepath.Join(fakes, "treetx"), "CVSROOT="+other)
	root, work, m1 := r.root, r.work, filepath.Join(r.work, "m1")
	run := func(dirs ...string) []string { return wrapping("run", dirs...) }
	lock := func(dirs ...string) []string { return wrapping("lock-shared", dirs...) }
	tests := []struct {
		dir   string
		args  []string
		env   []string
		wraps []string // what wraps cvs, outermost first; none: cvs alone
	}{
		{m1, []string{"-d", root, "rtag", "X", "m1"}, nil, run(root)},
		{m1, []string{"-Qd" + root, "tag", "X"}, nil, run(root)},
		{m1, []string{"-d:local:" + root + "/", "commit", "-m", "x"}, nil, run(root, m1)},
		{m1, []string{"-z", "3", "-q", "ci", "-m", "x"}, nil, run(root, m1)}, // CVS/Root, not $CVSROOT
		{m1, []string{"-s", "V=1", "admin", "-kb", "f1.c"}, nil, run(root)},
		{m1, []string{"import", "-m", "x", "mod", "vendor", "start"}, nil, run(other)}, // $CVSROOT: import ignores CVS/Root
		{m1, []string{"--allow-root", "/x", "-T", "/tmp", "watch", "on"}, nil, run(root)},
		{m1, []string{"watch", "add", "-a", "edit", "d1/f1.c"}, nil, run(root)},
		{m1, []string{"-e", "vi", "edit", "f1.c"}, nil, run(root, m1)},
		{m1, []string{"add", "-m", "new", "d1"}, nil, run(root, m1)}, // d1's entry is m1's CVS/Entries
		{m1, []string{"add", "f1.c"}, nil, run(root, m1)},
		{m1, []string{"remove", "d1/f1.c", "d1/f2.c"}, nil, run(root, m1+"/d1")},
		// No CVS/Root in work: $CVSROOT, as well as m1's.
		{work, []string{"commit", "-m", "x", "m1/d1/f1.c", "m1/d3"}, nil, run(other, root, m1)},
		{work, []string{"commit", "-mx", "-r", "1.9", "m1/d3/d4", "m1/d3/f1.c"}, nil, run(other, root, m1+"/d3")},
		{m1, []string{"commit", "-m", "x", "../m2"}, nil, run(root)}, // outside the current directory: no working copy
		{m1, []string{"-n", "commit", "-m", "x"}, nil, lock(root)},
		{m1, []string{"checkout", "m1"}, nil, lock(root)},
		{m1, []string{"-d", root, "update", "-d"}, nil, lock(root)},
		{m1, []string{"diff", "-r", "1.1", "--label", "d2", "d1"}, nil, lock(root)},
		{m1, []string{"-d", root, "release", "d1"}, nil, lock(root)},
		{m1, []string{"update"}, []string{"TREETX_CVS_SHARED=" + root}, nil}, // inside a reader of root: joins
		{m1, []string{"commit", "-m", "x"}, []string{"TREETX_CVS_TX=" + root + "/"}, nil},
		{m1, []string{"--version"}, nil, nil},
		{m1, []string{"-d", filepath.Join(r.base, "new"), "init"}, nil, nil},
		{m1, []string{"-H", "commit"}, nil, nil},
		{m1, []string{"--help", "tag"}, nil, nil},
		{m1, []string{"frobnicate"}, nil, nil},
		{m1, []string{"-d", ":pserver:anon@example.invalid:/cvsroot", "commit", "-m", "x"}, nil, nil},
		{m1, []string{"-d", ":fork:" + root, "commit", "-m", "x"}, nil, nil},
		{m1, []string{"-d", filepath.Join(r.base, "none"), "commit", "-m", "x"}, nil, nil}, // cvs says there is none
		{r.base, []string{"commit", "-m", "x"}, nil, run(other, root)},                     // $CVSROOT and work/*'s CVS/Root; not r.base, which holds root
		{r.base, []string{"commit", "-m", "x"}, []string{"CVSROOT="}, nil},                 // no root: cvs says so
	}
	for _, tt := range tests {
		os.Remove(log)
		out, code := runDropIn(t, tt.dir, append(slices.Clone(env), tt.env...), tt.args...)
		if code != 0 {
			t.Errorf("cvs %q: exit %d\n%s", tt.args, code, out)
			continue
		}
		b, _ := os.ReadFile(log)
		want := strings.Join(append(slices.Clone(tt.wraps), "cvs "+strings.Join(tt.args, " ")), "\n") + "\n"
		if string(b) != want {
			t.Errorf("cvs %q in %s ran:\n%swant:\n%s", tt.args, tt.dir, b, want)
		}
	}
}

// wrapping is what the fake treetx records for nested runs or locks on
// dirs, in the order of their paths.
func wrapping(what string, dirs ...string) []string {
	dirs = slices.Clone(dirs)
	slices.Sort(dirs)
	var lines []string
	for _, d := range dirs {
		lines = append(lines, what+" "+d)
	}
	return lines
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
		contains(t, "output", out, "taginfo: refusing m1/d3")
		if strings.Contains(out, "treetx") {
			t.Errorf("treetx spoke of an ordinary rollback:\n%s", out)
		}
		treeimage.AssertEqual(t, "before", before, "after", capture(t, r.root))
		noLeftovers(t, r.parent, "tree")
		r.check(t, r.files)
	})

	t.Run("a checkout waits for a transaction", func(t *testing.T) {
		t.Parallel()
		r := newCVSRepo(t, cvsSmall)
		co := t.TempDir()
		// A writer holds the repository's lock for a second.
		held, released := filepath.Join(r.base, "held"), filepath.Join(r.base, "released")
		w := start(t, invocation{args: []string{"lock", r.root, "--", "sh", "-c", `touch "$1"; sleep 1; touch "$2"`, "sh", held, released}})
		waitForFile(t, w, held)
		c := r.doc(t, "cvs -d /srv/cvsroot checkout m2", co)
		if out, code := runDropIn(t, co, dropIn(t, r.base), c.argv[1:]...); code != 0 {
			t.Fatalf("exit %d:\n%s", code, out)
		}
		if !exists(released) {
			t.Errorf("the checkout ran while a transaction held the repository")
		}
		wantCode(t, w.wait(t), 0)
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
		noLeftovers(t, r.parent, "tree") // no shadow: a reader
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
		for _, p := range []string{filepath.Join(r.parent, lockName("tree")), filepath.Join(r.work, lockName("m1"))} {
			if !exists(p) {
				t.Errorf("the commit did not go through treetx: no %s", p)
			}
		}
		noLeftovers(t, r.parent, "tree")
		noLeftovers(t, r.work, "m1")
		r.check(t, r.files)
		treeimage.AssertEqual(t, "the other before", beforeOther, "after", capture(t, other.root))
	})

	t.Run("a loginfo script's cvs joins the commit", func(t *testing.T) {
		t.Parallel()
		r := newCVSRepo(t, cvsSmall)
		// Through the drop-in too (the hook inherits cvs's PATH); -n: no
		// cvs locks, which the commit holds.
		rlog := filepath.Join(r.base, "rlog.out")
		r.editAdmin(t, "loginfo", fmt.Sprintf("ALL cvs -n -Q -d %s rlog -h m1/d1/f1.c >%s 2>&1\n", r.root, rlog))
		r.appendTo(t, "/* logged */\n", "m1/d1/f1.c")
		if out, code := runDropIn(t, filepath.Join(r.work, "m1"), dropIn(t, r.base), "-Q", "commit", "-m", "logged"); code != 0 {
			t.Fatalf("exit %d:\n%s", code, out)
		}
		b, err := os.ReadFile(rlog)
		if err != nil {
			t.Fatal(err)
		}
		contains(t, "the loginfo script's cvs rlog", string(b), "RCS file: "+r.root+"/m1/d1/f1.c,v")
		noLeftovers(t, r.parent, "tree")
		r.check(t, r.files)
	})

	t.Run("no repository needed", func(t *testing.T) {
		t.Parallel()
		base := t.TempDir()
		env := dropIn(t, base)
		for _, args := range [][]string{
			{"-d", filepath.Join(base, "none"), "--version"},
			{"-d", filepath.Join(base, "none"), "-H", "commit"},
			{"-d", filepath.Join(base, "new"), "init"},
		} {
			plain := exec.Command("cvs", args...)
			plain.Dir, plain.Env = base, cvsEnviron(base)
			want, err := plain.CombinedOutput()
			if args[2] == "init" {
				os.RemoveAll(filepath.Join(base, "new"))
			}
			out, code := runDropIn(t, base, env, args...)
			if wantCode := plain.ProcessState.ExitCode(); code != wantCode || out != string(want) {
				t.Errorf("cvs %q through the drop-in: exit %d, output:\n%s\nwithout it: exit %d (%v), output:\n%s", args, code, out, wantCode, err, want)
			}
		}
		if !exists(filepath.Join(base, "new", "CVSROOT", "history")) {
			t.Errorf("cvs init through the drop-in made no repository")
		}
		if names := listing(t, base); slices.ContainsFunc(names, func(n string) bool { return strings.HasPrefix(n, ".#treetx.") }) {
			t.Errorf("treetx ran: %q", names)
		}
	})

	t.Run("a working copy whose parent is not writable", func(t *testing.T) {
		t.Parallel()
		testenv.Require(t, testenv.Root)
		r := newCVSRepo(t, cvsSmall)
		cred := r.forNobody(t)
		// work is nobody's, its parent (BASE) root's: the commit is a
		// transaction on the repository alone.
		r.appendTo(t, "/* by nobody */\n", "m2/d1/f1.c")
		cmd := exec.Command(cvsScript(t, "cvs-atomic"), "-Q", "commit", "-m", "by nobody")
		cmd.Dir = r.work
		cmd.Env = withTreetxInPath(cvsEnviron(r.base, "CVSROOT="+r.root))
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		if !exists(filepath.Join(r.parent, lockName("tree"))) {
			t.Errorf("the commit did not go through treetx")
		}
		if names := listing(t, r.base); slices.ContainsFunc(names, func(n string) bool { return strings.HasPrefix(n, ".#treetx.") }) {
			t.Errorf("treetx wrapped the working copy: %q in its parent", names)
		}
		noLeftovers(t, r.parent, "tree")
		r.check(t, r.files)

		// A reader who may not write the repository's parent: under the
		// shared lock if the lock files are there, else without it.
		if err := os.Chown(r.parent, 0, 0); err != nil {
			t.Fatal(err)
		}
		for _, lockFiles := range []bool{true, false} {
			if !lockFiles {
				for _, n := range []string{lockName("tree"), ".#treetx.tree.gate"} {
					if err := os.Remove(filepath.Join(r.parent, n)); err != nil {
						t.Fatal(err)
					}
				}
			}
			cmd := exec.Command(cvsScript(t, "cvs-atomic"), "-q", "update")
			cmd.Dir = filepath.Join(r.work, "m2")
			cmd.Env = withTreetxInPath(cvsEnviron(r.base))
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
			if out, err := cmd.CombinedOutput(); err != nil || len(out) != 0 {
				t.Errorf("cvs -q update by nobody, lock files there %v: %v\n%s", lockFiles, err, out)
			}
		}
		if exists(filepath.Join(r.parent, lockName("tree"))) {
			t.Errorf("a lock file was made where nobody may not write")
		}
	})
}
