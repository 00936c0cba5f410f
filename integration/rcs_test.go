package integration

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/treetx/treetx/internal/testenv"
	"github.com/treetx/treetx/internal/treeimage"
)

// rcsDirs are the directories of the RCS tree; each holds working files
// f1.c..f4.c and their history in RCS/f1.c,v...
var rcsDirs = []string{"a", "a/x", "b", "c", "c/y", "d"}

// rcsTree is a directory of RCS files: PARENT/tree.
type rcsTree struct {
	parent, tree string
	files        []string // the working files, relative to tree, in order
}

// newRCSTree checks in (ci -i -u) every file of a new tree, as root.
func newRCSTree(t *testing.T) *rcsTree {
	t.Helper()
	testenv.Require(t, testenv.RCS)
	parent := t.TempDir()
	r := &rcsTree{parent: parent, tree: filepath.Join(parent, "tree")}
	files := map[string]string{}
	for _, d := range rcsDirs {
		files[d+"/RCS/"] = ""
		for n := 1; n <= 4; n++ {
			p := fmt.Sprintf("%s/f%d.c", d, n)
			files[p] = fmt.Sprintf("/* %s */\nint f%d(void) { return %d; }\n", p, n, n)
			r.files = append(r.files, p)
		}
	}
	writeFiles(t, r.tree, files)
	r.must(t, nil, append([]string{"ci", "-q", "-i", "-u", "-t-sources", "-minitial"}, r.files...)...)
	return r
}

// rcsCmd is an RCS command run in the tree, as cred (nil: root).
func (r *rcsTree) cmd(cred *syscall.Credential, argv ...string) *exec.Cmd {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = r.tree
	cmd.Env = rcsEnviron(cred)
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	return cmd
}

// rcsEnviron is the test's environment without RCSINIT, with LOGNAME and
// USER naming cred's user (RCS records it as the author and the locker).
func rcsEnviron(cred *syscall.Credential) []string {
	name := "root"
	if cred != nil && cred.Uid == nobodyID {
		name = "nobody"
	}
	var e []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if k != "RCSINIT" && k != "LOGNAME" && k != "USER" {
			e = append(e, kv)
		}
	}
	return append(e, "LOGNAME="+name, "USER="+name)
}

// must runs an RCS command that must succeed.
func (r *rcsTree) must(t *testing.T, cred *syscall.Credential, argv ...string) {
	t.Helper()
	if out, err := r.cmd(cred, argv...).CombinedOutput(); err != nil {
		t.Fatalf("%q: %v\n%s", argv, err, out)
	}
}

// exec runs an RCS command and returns its output and exit status.
func (r *rcsTree) exec(t *testing.T, cred *syscall.Credential, argv ...string) (string, int) {
	t.Helper()
	out, err := r.cmd(cred, argv...).CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(out), ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%q: %v", argv, err)
	}
	return string(out), 0
}

// doc takes a command of the README's CVS section, /srv/rcs standing for
// the tree, its globs matched in the tree.
func (r *rcsTree) doc(t *testing.T, line string) docCmd {
	t.Helper()
	return readmeCmd(t, line, r.tree, "/srv/rcs", r.tree)
}

// runDoc runs a "treetx ..." command in the tree, as cred.
func (r *rcsTree) runDoc(t *testing.T, c docCmd, cred *syscall.Credential) result {
	t.Helper()
	return invoke(t, invocation{args: c.argv[1:], env: rcsEnviron(cred), dir: r.tree, cred: cred})
}

// copy is a cp -a of the tree in a new temporary directory.
func (r *rcsTree) copy(t *testing.T) *rcsTree {
	t.Helper()
	parent := t.TempDir()
	c := &rcsTree{parent: parent, tree: filepath.Join(parent, "tree"), files: r.files}
	cpA(t, r.tree, c.tree)
	return c
}

// appendAll appends text to every working file.
func (r *rcsTree) appendAll(t *testing.T, text string) {
	t.Helper()
	for _, p := range r.files {
		f, err := os.OpenFile(filepath.Join(r.tree, p), os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		_, err = f.WriteString(text)
		if err := errors.Join(err, f.Close()); err != nil {
			t.Fatal(err)
		}
	}
}

// rcsFile is the ,v file of working file p.
func rcsFile(p string) string { return filepath.Join(filepath.Dir(p), "RCS", filepath.Base(p)+",v") }

// check runs RCS's own tools: rlog reads every ,v file, and co -p of each
// yields the working file's content as of revision rev.
func (r *rcsTree) check(t *testing.T, rev string, want map[string]string) {
	t.Helper()
	if out, code := r.exec(t, nil, append([]string{"rlog"}, r.files...)...); code != 0 {
		t.Errorf("rlog exited %d:\n%s", code, tail(out, 10))
	}
	for _, p := range r.files {
		out, err := r.cmd(nil, "co", "-q", "-p"+rev, p).Output()
		if err != nil {
			t.Errorf("co -p%s %s: %v", rev, p, err)
		} else if string(out) != want[p] {
			t.Errorf("co -p%s %s = %q, want %q", rev, p, out, want[p])
		}
	}
}

// contents reads every working file.
func (r *rcsTree) contents(t *testing.T) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, p := range r.files {
		b, err := os.ReadFile(filepath.Join(r.tree, p))
		if err != nil {
			t.Fatal(err)
		}
		m[p] = string(b)
	}
	return m
}

// TestRCSWrappedEqualsUnwrapped: co -l, ci -u and rcs -n over every file
// of a tree of RCS files, each under treetx run, leave what they leave
// without it on a copy, dates aside.
func TestRCSWrappedEqualsUnwrapped(t *testing.T) {
	t.Parallel()
	r := newRCSTree(t)
	old := r.contents(t)
	before := capture(t, r.tree)
	plain := r.copy(t)
	for _, line := range []string{
		"treetx run /srv/rcs -- co -l */f*.c */*/f*.c",
		"", // the files are changed
		`treetx run /srv/rcs -- ci -u -m"change" */f*.c */*/f*.c`,
		"treetx run /srv/rcs -- rcs -nREL_2:1.2 */f*.c */*/f*.c",
	} {
		if line == "" {
			r.appendAll(t, "/* change */\n")
			plain.appendAll(t, "/* change */\n")
			continue
		}
		c := r.doc(t, line)
		plain.must(t, nil, c.after(t)...)
		res := r.runDoc(t, c, nil)
		wantCode(t, res, 0)
		if strings.Contains(res.stderr, "treetx") {
			t.Errorf("%s: stderr:\n%s", line, res.stderr)
		}
	}
	noLeftovers(t, r.parent, "tree")
	assertSameOutcome(t, before, plain.tree, r.tree)
	for _, p := range r.files {
		if !hasSymbol(t, filepath.Join(r.tree, rcsFile(p)), "REL_2") {
			t.Errorf("%s lacks REL_2", rcsFile(p))
		}
	}
	r.check(t, "1.1", old)
	r.check(t, "REL_2", r.contents(t))
}

// TestRCSFailureRollsBack: as user nobody, ci -u over every file of the
// tree, where c/RCS is read-only. Without treetx, ci checks in the files
// before and after c and fails on c's; under treetx run, the tree (the
// ,v files, their locks and the working files) is as before.
func TestRCSFailureRollsBack(t *testing.T) {
	t.Parallel()
	testenv.Require(t, testenv.Root)
	prepare := func(t *testing.T) (*rcsTree, *syscall.Credential) {
		r := newRCSTree(t)
		for _, d := range []string{r.parent, filepath.Dir(r.parent)} {
			if err := os.Chmod(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		sh(t, nil, fmt.Sprintf("chown -R %d:%d %q", nobodyID, nobodyID, r.parent))
		nobody := &syscall.Credential{Uid: nobodyID, Gid: nobodyID}
		r.must(t, nobody, append([]string{"co", "-q", "-l"}, r.files...)...)
		r.appendAll(t, "/* change by nobody */\n")
		if err := os.Chmod(filepath.Join(r.tree, "c", "RCS"), 0o555); err != nil {
			t.Fatal(err)
		}
		return r, nobody
	}
	const ci = `treetx run /srv/rcs -- ci -u -m"change" */f*.c */*/f*.c`

	plain, nobody := prepare(t)
	out, code := plain.exec(t, nobody, plain.doc(t, ci).after(t)...)
	if code == 0 {
		t.Fatalf("ci into a read-only RCS directory succeeded:\n%s", out)
	}
	contains(t, "ci's output", out, "Permission denied")
	var in, notIn []string
	for _, p := range plain.files {
		if headRev(t, filepath.Join(plain.tree, rcsFile(p))) == "1.2" {
			in = append(in, p)
		} else {
			notIn = append(notIn, p)
		}
	}
	if len(notIn) != 4 || !strings.HasPrefix(notIn[0], "c/") || len(in) != len(plain.files)-4 {
		t.Errorf("without treetx ci checked in %q and not %q; want all but c's", in, notIn)
	}
	t.Logf("without treetx: ci exited %d; checked in %d files (a, a/x, b, c/y, d), not the 4 of c", code, len(in))

	r, nobody := prepare(t)
	work := r.contents(t)
	before := capture(t, r.tree)
	res := r.runDoc(t, r.doc(t, ci), nobody)
	wantCode(t, res, code)
	contains(t, "treetx's stderr", res.stderr, "rolled back")
	treeimage.AssertEqual(t, "before", before, "after the rollback", capture(t, r.tree))
	noLeftovers(t, r.parent, "tree")
	// Every file is still locked by nobody at 1.1, and its working file
	// holds the change: ci can be run again once c/RCS is writable.
	if out, code := r.exec(t, nil, append([]string{"rlog", "-L", "-R", "-lnobody"}, r.files...)...); code != 0 || len(strings.Fields(out)) != len(r.files) {
		t.Errorf("rlog -L -R -lnobody: exit %d, %d files locked by nobody, want %d:\n%s", code, len(strings.Fields(out)), len(r.files), out)
	}
	if err := os.Chmod(filepath.Join(r.tree, "c", "RCS"), 0o755); err != nil {
		t.Fatal(err)
	}
	res = r.runDoc(t, r.doc(t, ci), nobody)
	wantCode(t, res, 0)
	r.check(t, "1.2", work)
}
