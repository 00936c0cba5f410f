package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/treetx/treetx/internal/testenv"
	"github.com/treetx/treetx/internal/treeimage"
)

// cvsLib is the second repository of the two-root tests: one module, lib.
var cvsLib = cvsShape{name: "lib", modules: []string{"lib"}, dirs: []string{"d1", "d2"}, files: 5, lines: 5}

// cvsWorld is a base directory W holding two repositories, W/r1/cvsroot
// (the small shape: modules m1, m2, m3) and W/r2/cvsroot (the lib shape),
// a working copy of r1's modules in W/work (W/work/m1...), and m1's
// sources as imported in W/src/m1. cvs runs with HOME=W, so that the
// history lines of two worlds read the same.
type cvsWorld struct {
	base string
	env  []string // cvs's environment: the plain cvs, or the drop-in first in PATH
	cred *syscall.Credential
	// seen caches the normalized content of files by path, for as long
	// as their inode, size, mtime and ctime stay.
	seen map[string]seenFile
}

type seenFile struct {
	key  [4]int64
	text string
}

// newCVSWorld builds a world at base from the templates; with dropIn, the
// cvs it runs is scripts/cvs-atomic.
func newCVSWorld(t *testing.T, base string, wrapped bool) *cvsWorld {
	t.Helper()
	small, lib := cvsTemplateFor(t, cvsSmall), cvsTemplateFor(t, cvsLib)
	for _, d := range []string{"r1", "r2", "src"} {
		if err := os.MkdirAll(filepath.Join(base, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cpA(t, filepath.Join(small.dir, "root"), filepath.Join(base, "r1", "cvsroot"))
	cpA(t, filepath.Join(lib.dir, "root"), filepath.Join(base, "r2", "cvsroot"))
	cpA(t, filepath.Join(small.dir, "work"), filepath.Join(base, "work"))
	cpA(t, filepath.Join(small.dir, "src", "m1"), filepath.Join(base, "src", "m1"))
	setRoots(t, filepath.Join(base, "work"), filepath.Join(base, "r1", "cvsroot"))
	w := &cvsWorld{base: base, env: cvsEnviron(base), seen: map[string]seenFile{}}
	if wrapped {
		w.env = dropIn(t, base)
	}
	if os.Geteuid() == 0 {
		w.cred = cvsAdminCred(t) // cvs admin is for members of _cvsadmin
	}
	return w
}

// setRoots points every CVS/Root under dir at root.
func setRoots(t *testing.T, dir, root string) {
	t.Helper()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.Name() != "Root" || filepath.Base(filepath.Dir(p)) != "CVS" {
			return err
		}
		return os.WriteFile(p, []byte(root+"\n"), 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// cvsRun is what one cvs command left: its output and exit status.
type cvsRun struct {
	stdout, stderr string
	code           int
}

// run runs "cvs ARGS" in dir (relative to the base), the world's cvs
// (found in its PATH), with extra in its environment and stdin as its
// standard input. It may run in a goroutine of its own: it does not fail
// the test, it returns why it could not run cvs.
func (w *cvsWorld) run(dir, stdin string, extra []string, args ...string) (cvsRun, error) {
	env := append(slices.Clone(w.env), extra...)
	ctx, cancel := context.WithTimeout(context.Background(), cvsTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "cvs", args...)
	for _, kv := range env {
		if p, ok := strings.CutPrefix(kv, "PATH="); ok {
			for _, d := range filepath.SplitList(p) {
				if c := filepath.Join(d, "cvs"); exists(c) {
					cmd.Path = c
					break
				}
			}
		}
	}
	cmd.Dir, cmd.Env = filepath.Join(w.base, dir), env
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if w.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: w.cred}
	}
	err := cmd.Run()
	if ctx.Err() != nil {
		return cvsRun{}, fmt.Errorf("cvs %q in %s ran %v and was killed: it hangs", args, dir, cvsTimeout)
	}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		return cvsRun{}, fmt.Errorf("cvs %q: %v", args, err)
	}
	return cvsRun{stdout: stdout.String(), stderr: stderr.String(), code: cmd.ProcessState.ExitCode()}, nil
}

// awaitCleanups waits for treetx's detached cleaners under the world: the
// trees they delete lie beside the trees of the transactions.
func (w *cvsWorld) awaitCleanups(t *testing.T) {
	t.Helper()
	filepath.WalkDir(w.base, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		if strings.HasPrefix(d.Name(), ".#treetx.") {
			return filepath.SkipDir
		}
		if d.Name() == "CVS" {
			return filepath.SkipDir
		}
		awaitCleanup(t, p)
		return nil
	})
}

// What differs between two runs of the same commands by nature, and is
// normalized before a comparison: the world's base directory (two
// temporary directories); the times cvs writes (revision dates and
// commitids in ,v files and in cvs log's output, the hex time of each
// CVSROOT/history line, and ctime(3) dates: file times in CVS/Entries,
// edit times in CVS/fileattr and in cvs editors' output); cvs's temporary
// files' names. Nothing else: every other byte of stdout, stderr, the
// repositories and the working copies is compared.
var cvsNatural = []struct {
	re   *regexp.Regexp
	repl string
}{
	{regexp.MustCompile(`\d{4}\.\d\d\.\d\d\.\d\d\.\d\d\.\d\d`), "RCSDATE"},
	{regexp.MustCompile(`\d{4}/\d\d/\d\d \d\d:\d\d:\d\d`), "LOGDATE"},
	{regexp.MustCompile(`\d{4}-\d\d-\d\d \d\d:\d\d:\d\d( [+-]\d{4})?`), "ISODATE"},
	{regexp.MustCompile(`((?:commitid|Commit Identifier)[:\s]+)[0-9A-Za-z]+`), "${1}ID"},
	{regexp.MustCompile(`(?m)^([A-Za-z])[0-9a-f]{8}\|`), "${1}TIME|"},
	{regexp.MustCompile(`(Mon|Tue|Wed|Thu|Fri|Sat|Sun) (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [ 0-9]\d \d\d:\d\d:\d\d \d{4}`), "CTIME"},
	{regexp.MustCompile(`/(var/)?tmp/cvs[A-Za-z0-9]{6}`), "CVSTEMP"},
}

// natural normalizes text of the world at base.
func natural(base, text string) string {
	text = strings.ReplaceAll(text, base, "$W")
	for _, n := range cvsNatural {
		text = n.re.ReplaceAllString(text, n.repl)
	}
	return text
}

// worldState is every entry under the world's base but treetx's own (the
// lock files it keeps beside each tree of a transaction, .#treetx.*): its
// type, mode, owner, symlink target and normalized content, by slash path.
func (w *cvsWorld) state(t *testing.T) map[string]string {
	t.Helper()
	st := map[string]string{}
	err := filepath.WalkDir(w.base, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if strings.HasPrefix(d.Name(), ".#treetx.") {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		sys := fi.Sys().(*syscall.Stat_t)
		desc := fmt.Sprintf("%v %d:%d", fi.Mode(), sys.Uid, sys.Gid)
		switch {
		case fi.Mode().IsRegular():
			key := [4]int64{int64(sys.Ino), sys.Size, sys.Mtim.Nano(), sys.Ctim.Nano()}
			if c, ok := w.seen[p]; ok && c.key == key {
				desc += "\n" + c.text
				break
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			text := natural(w.base, string(b))
			w.seen[p] = seenFile{key, text}
			desc += "\n" + text
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			desc += " -> " + natural(w.base, target)
		}
		rel, _ := filepath.Rel(w.base, p)
		st[filepath.ToSlash(rel)] = desc
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// diffStates reports how two world states differ.
func diffStates(t *testing.T, labelA string, a map[string]string, labelB string, b map[string]string) {
	t.Helper()
	n := 0
	report := func(format string, args ...any) {
		if n++; n <= 10 {
			t.Errorf(format, args...)
		}
	}
	for _, p := range slices.Sorted(maps.Keys(a)) {
		vb, ok := b[p]
		switch {
		case !ok:
			report("only %s: %s", labelA, p)
		case vb != a[p]:
			report("%s differs:\n%s:\n%s\n%s:\n%s", p, labelA, firstDiff([]byte(a[p]), []byte(vb)), labelB, firstDiff([]byte(vb), []byte(a[p])))
		}
	}
	for _, p := range slices.Sorted(maps.Keys(b)) {
		if _, ok := a[p]; !ok {
			report("only %s: %s", labelB, p)
		}
	}
	if n > 10 {
		t.Errorf("... %d differences in all", n)
	}
}

func sameState(a, b map[string]string) bool { return maps.Equal(a, b) }

// compatStep is one cvs command of the compatibility test.
type compatStep struct {
	name string
	// prep changes files before the command, the same in both worlds.
	prep  func(t *testing.T, base string)
	dir   string   // where cvs runs, relative to the base
	args  []string // "$W" stands for the base
	env   []string // added to the environment; "$W" stands for the base
	stdin string
	code  int // cvs's exit status
	// tx: the drop-in runs it in a transaction; when it fails, the
	// repositories (and the working copy directory wc, relative to the
	// base, if it joined) are as they were before it.
	tx bool
	wc string // the deepest directory holding what the command names
	// partial: without treetx, the failure leaves a change behind.
	partial bool
	// says: what the plain cvs's output holds ("$W" standing for the
	// base): the command does what the step is for.
	says []string
}

// appendFiles appends text to files under the base.
func appendFiles(text string, paths ...string) func(t *testing.T, base string) {
	return func(t *testing.T, base string) {
		t.Helper()
		for _, p := range paths {
			f, err := os.OpenFile(filepath.Join(base, filepath.FromSlash(p)), os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				t.Fatal(err)
			}
			_, err = f.WriteString(text)
			if err := errors.Join(err, f.Close()); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// badLoginfo is a loginfo line whose format cvs refuses, after a commit.
const badLoginfo = "ALL echo %{X}\n"

// compatSteps is the session the compatibility test runs twice.
func compatSteps() []compatStep {
	r1, r2 := "$W/r1/cvsroot", "$W/r2/cvsroot"
	m1 := "work/m1"
	return []compatStep{
		// Two roots in one working copy.
		{name: "checkout from the second root inside m1", dir: m1, args: []string{"-d", r2, "checkout", "-d", "ext", "lib"}},
		{name: "commit to both roots", dir: m1, args: []string{"commit", "-m", "both roots"}, tx: true, wc: m1,
			prep: appendFiles("/* both roots */\n", "work/m1/d1/f1.c", "work/m1/ext/d1/f2.c"),
			says: []string{r1 + "/m1/d1/f1.c,v  <--  d1/f1.c", r2 + "/lib/d1/f2.c,v  <--  ext/d1/f2.c"}},
		{name: "status across both roots", dir: m1, args: []string{"status", "d1/f1.c", "ext/d1/f2.c"}},

		// tag, rtag, and their errors.
		{name: "tag with a bad name", dir: m1, args: []string{"tag", "bad tag", "d2/f2.c"}, code: 1, tx: true},
		{name: "tag both roots", dir: m1, args: []string{"tag", "T1"}, tx: true},
		{name: "rtag a branch", dir: m1, args: []string{"rtag", "-b", "B1", "m1"}, tx: true},
		{name: "rtag of no module", dir: m1, args: []string{"rtag", "T2", "nosuchmodule"}, code: 1, tx: true, partial: true}, // a line in CVSROOT/history
		{name: "tag -d of no tag", dir: m1, args: []string{"tag", "-d", "NOSUCH", "d1/f1.c"}, tx: true},

		// An rtag that taginfo refuses for one of three directories: cvs
		// tags the other two. (CVSROOT/taginfo is written in place, as a
		// commit of it would leave it.)
		{name: "rtag refused for one directory", dir: m1, args: []string{"rtag", "REL_2", "m1/d1", "m1/d2", "m1/d3"}, code: 1, tx: true, partial: true,
			prep: appendFiles(`^m1/d3 sh -c "echo taginfo: refusing %p >&2; exit 1"`+"\n", "r1/cvsroot/CVSROOT/taginfo")},

		// add, and a failed add that leaves the directory added without
		// treetx, in the repository and the working copy.
		{name: "add a directory and no file", dir: m1, args: []string{"add", "newdir", "nosuchfile"}, code: 1, tx: true, wc: m1, partial: true,
			prep: func(t *testing.T, base string) {
				writeFiles(t, filepath.Join(base, m1), map[string]string{"newdir/n.c": "new\n"})
			}},
		{name: "add a directory", dir: m1, args: []string{"add", "newdir"}, tx: true, wc: m1},
		{name: "add a file", dir: m1, args: []string{"add", "newdir/n.c"}, tx: true, wc: m1},
		{name: "add a file already there", dir: m1, args: []string{"add", "d1/f1.c"}, code: 1, tx: true, wc: m1 + "/d1"},
		{name: "commit the new file", dir: m1, args: []string{"commit", "-m", "new file", "newdir"}, tx: true, wc: m1},
		{name: "commit of no file", dir: m1, args: []string{"commit", "-m", "x", "nosuchfile"}, code: 1, tx: true, wc: m1},

		// remove.
		{name: "remove a file still there", dir: m1, args: []string{"remove", "d2/f3.c"}, tx: true, wc: m1 + "/d2"},
		{name: "remove", dir: m1, args: []string{"remove", "d2/f3.c"}, tx: true, wc: m1,
			prep: func(t *testing.T, base string) {
				if err := os.Remove(filepath.Join(base, m1, "d2/f3.c")); err != nil {
					t.Fatal(err)
				}
			}},
		{name: "commit the removal", dir: m1, args: []string{"commit", "-m", "removed", "d2"}, tx: true, wc: m1},
		{name: "remove of no file", dir: m1, args: []string{"remove", "nosuchfile"}, tx: true, wc: m1},

		// A commit that cvs aborts after writing the new revision (a
		// loginfo format it does not know): the repository has it, the
		// working copy does not.
		{name: "commit that loginfo aborts", dir: m1, args: []string{"commit", "-m", "aborted", "d1/f5.c"}, code: 1, tx: true, wc: m1 + "/d1", partial: true,
			prep: func(t *testing.T, base string) {
				appendFiles(badLoginfo, "r1/cvsroot/CVSROOT/loginfo")(t, base)
				appendFiles("/* aborted */\n", "work/m1/d1/f5.c")(t, base)
			}},

		// admin, and an admin that fails on its second file after
		// changing the first.
		{name: "admin -n on a revision one file lacks", dir: m1, args: []string{"admin", "-nSTABLE:1.2", "d1/f1.c", "d2/f2.c"}, code: 1, tx: true, partial: true},
		{name: "admin -n", dir: m1, args: []string{"admin", "-nSTABLE:1.1", "d1/f2.c", "d2/f2.c"}, tx: true},
		{name: "admin -o of no revision", dir: m1, args: []string{"admin", "-o", "9.9", "d1/f1.c"}, code: 1, tx: true},

		// A branch, a commit on it, and a merge with -j.
		{name: "tag a branch", dir: m1, args: []string{"tag", "-b", "BR", "d1"}, tx: true,
			prep: func(t *testing.T, base string) {
				p := filepath.Join(base, "r1/cvsroot/CVSROOT/loginfo")
				b, err := os.ReadFile(p)
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, bytes.TrimSuffix(b, []byte(badLoginfo)), 0o644); err != nil {
					t.Fatal(err)
				}
			}},
		{name: "update to the branch", dir: m1, args: []string{"update", "-r", "BR", "d1"}},
		{name: "commit on the branch", dir: m1, args: []string{"commit", "-m", "on the branch", "d1/f4.c"}, tx: true, wc: m1,
			prep: appendFiles("/* on BR */\n", "work/m1/d1/f4.c")},
		{name: "update back to the trunk", dir: m1, args: []string{"update", "-A", "d1"}},
		{name: "merge of no branch", dir: m1, args: []string{"update", "-j", "NOSUCH", "d1/f4.c"}},
		{name: "merge the branch", dir: m1, args: []string{"update", "-j", "BR", "d1/f4.c"}},
		{name: "diff of the merge", dir: m1, args: []string{"diff", "d1/f4.c"}, code: 1},
		{name: "commit the merge", dir: m1, args: []string{"commit", "-m", "merged BR", "d1/f4.c"}, tx: true, wc: m1},
		{name: "log of the merge", dir: m1, args: []string{"log", "-r1.2:", "d1/f4.c"}},

		// A vendor import that conflicts with the trunk (run with
		// $CVSROOT, as a user would: cvs echoes its -d in its advice).
		{name: "import with conflicts", dir: "src/m1", args: []string{"import", "-m", "vendor 2", "m1", "vendor", "start2"}, env: []string{"CVSROOT=" + r1}, tx: true,
			prep: appendFiles("/* vendor 2 */\n", "src/m1/d1/f1.c", "src/m1/d1/f4.c"),
			says: []string{"conflicts created by this import", "\tcvs checkout -j<prev_rel_tag> -jstart2 m1\n"}},
		{name: "import with too few arguments", dir: "src/m1", args: []string{"import", "-m", "x", "m1"}, env: []string{"CVSROOT=" + r1}, code: 1, tx: true},
		{name: "rdiff of the vendor branch", dir: m1, args: []string{"rdiff", "-s", "-r", "start", "-r", "start2", "m1"}},

		// watch and edit.
		{name: "watch on", dir: m1, args: []string{"watch", "on", "d3/f1.c"}, tx: true},
		{name: "watch add", dir: m1, args: []string{"watch", "add", "-a", "edit", "d3/f1.c"}, tx: true},
		{name: "watch add of a bad action", dir: m1, args: []string{"watch", "add", "-a", "bogus", "d3/f1.c"}, code: 1, tx: true},
		{name: "edit", dir: m1, args: []string{"edit", "d3/f1.c"}, tx: true, wc: m1},
		{name: "edit of no file", dir: m1, args: []string{"edit", "nosuchfile"}, code: 1, tx: true, wc: m1},
		{name: "editors", dir: m1, args: []string{"editors", "d3/f1.c"}},
		{name: "watchers", dir: m1, args: []string{"watchers", "d3/f1.c"}},
		{name: "unedit", dir: m1, args: []string{"unedit", "d3/f1.c"}, tx: true, wc: m1},
		{name: "watch off", dir: m1, args: []string{"watch", "off", "d3/f1.c"}, tx: true},

		// Checkouts from two roots side by side, and a commit at the top
		// (no CVS directory there: $CVSROOT).
		{name: "checkout from the first root", dir: "co", args: []string{"-d", r1, "checkout", "-d", "a", "m2"},
			prep: func(t *testing.T, base string) {
				if err := os.Mkdir(filepath.Join(base, "co"), 0o755); err != nil {
					t.Fatal(err)
				}
			}},
		{name: "checkout from the second root", dir: "co", args: []string{"-d", r2, "checkout", "-d", "b", "lib"}},
		{name: "commit at the top of both", dir: "co", args: []string{"commit", "-m", "from co"}, env: []string{"CVSROOT=" + r1}, tx: true, wc: "co",
			prep: appendFiles("/* from co */\n", "co/a/d2/f1.c", "co/b/d2/f1.c"),
			says: []string{r1 + "/m2/d2/f1.c,v  <--  a/d2/f1.c", r2 + "/lib/d2/f1.c,v  <--  b/d2/f1.c"}},
		{name: "update at the top of both", dir: "co", args: []string{"-q", "update"}, env: []string{"CVSROOT=" + r1}},

		// release, which asks, and runs "cvs -n -q update" itself.
		{name: "release", dir: "work", args: []string{"-d", r1, "release", "m2"}, stdin: "y\n"},
		{name: "release -d", dir: "work", args: []string{"-d", r1, "release", "-d", "m3"}, stdin: "y\n"},
		{name: "release of no directory", dir: "work", args: []string{"-d", r1, "release", "nosuchdir"}, stdin: "y\n"},

		// What needs no repository, and errors of cvs itself.
		{name: "version", dir: ".", args: []string{"--version"}},
		{name: "help of a command", dir: ".", args: []string{"-H", "commit"}, code: 1},
		{name: "unknown command", dir: m1, args: []string{"frobnicate"}, code: 1},
		{name: "checkout of no module", dir: ".", args: []string{"-d", r1, "checkout", "nosuchmodule"}, code: 1},
		{name: "update of no directory", dir: m1, args: []string{"update", "nosuchdir"}},
		{name: "rlog", dir: m1, args: []string{"rlog", "-h", "m1/d1/f1.c"}},
	}
}

// TestCVSDropInCompatible: a session of cvs commands over two
// repositories, run once with the plain cvs and once through
// scripts/cvs-atomic (first in PATH as cvs), each in a world of its own
// built from the same templates. After every command, its stdout, stderr
// and exit status are the same, and so is every byte of the two worlds'
// repositories and working copies (cvsNatural lists what is normalized);
// except that a command the drop-in ran as a transaction and that failed
// leaves the repositories (and the working copy, when it joined) exactly
// as they were before it, where the plain cvs may have left half of its
// work (the plain world is then put back as it was before the command, so
// that the two go on from the same state).
func TestCVSDropInCompatible(t *testing.T) {
	t.Parallel()
	testenv.Require(t, testenv.CVS)
	top := t.TempDir()
	plain := newCVSWorld(t, filepath.Join(top, "A"), false)
	wrapped := newCVSWorld(t, filepath.Join(top, "B"), true)
	start := time.Now()
	for _, s := range compatSteps() {
		if t.Failed() {
			break // the worlds no longer start equal
		}
		if s.prep != nil {
			s.prep(t, plain.base)
			s.prep(t, wrapped.base)
		}
		expand := func(w *cvsWorld, words []string) []string {
			out := make([]string, len(words))
			for i, word := range words {
				out[i] = strings.ReplaceAll(word, "$W", w.base)
			}
			return out
		}
		var snapshot string
		var beforeState map[string]string
		var before map[string]treeimage.Image
		if s.tx && s.code != 0 {
			snapshot = plain.base + ".before"
			cpA(t, plain.base, snapshot)
			beforeState = plain.state(t)
			before = map[string]treeimage.Image{}
			for _, d := range []string{"r1/cvsroot", "r2/cvsroot", s.wc} {
				if d != "" {
					before[d] = wcCapture(t, filepath.Join(wrapped.base, d))
				}
			}
		}
		// The two at once: cvs waits for the clock to pass the second of
		// the files it wrote (sleep_past), a second at worst each time.
		var p, w cvsRun
		var perr, werr error
		done := make(chan struct{})
		go func() {
			p, perr = plain.run(s.dir, s.stdin, expand(plain, s.env), expand(plain, s.args)...)
			close(done)
		}()
		w, werr = wrapped.run(s.dir, s.stdin, expand(wrapped, s.env), expand(wrapped, s.args)...)
		<-done
		if err := errors.Join(perr, werr); err != nil {
			t.Fatal(err)
		}
		wrapped.awaitCleanups(t)
		what := fmt.Sprintf("%s (cvs %s)", s.name, strings.Join(s.args, " "))
		t.Logf("%v %s: exit %d plain, %d wrapped", time.Since(start).Round(time.Millisecond), what, p.code, w.code)
		if p.code != s.code {
			t.Errorf("%s: the plain cvs exited %d, want %d\nstdout:\n%s\nstderr:\n%s", what, p.code, s.code, p.stdout, p.stderr)
		}
		for _, want := range s.says {
			if !strings.Contains(natural(plain.base, p.stdout+p.stderr), want) {
				t.Errorf("%s: the plain cvs's output does not hold %q:\n%s%s", what, want, p.stdout, p.stderr)
			}
		}
		if w.code != p.code {
			t.Errorf("%s: exit %d through the drop-in, %d without", what, w.code, p.code)
		}
		for _, o := range []struct{ name, plain, wrapped string }{{"stdout", p.stdout, w.stdout}, {"stderr", p.stderr, w.stderr}} {
			if a, b := natural(plain.base, o.plain), natural(wrapped.base, o.wrapped); a != b {
				t.Errorf("%s: %s differs\nwithout the drop-in:\n%s\nthrough it:\n%s", what, o.name, a, b)
			}
		}
		if snapshot != "" {
			for d, img := range before {
				treeimage.AssertEqual(t, what+": "+d+" before", img, "after the rollback", wcCapture(t, filepath.Join(wrapped.base, d)))
			}
			if after := plain.state(t); !sameState(beforeState, after) != s.partial {
				t.Errorf("%s: without the drop-in, the failure left a change behind: %v, want %v", what, !s.partial, s.partial)
				diffStates(t, "before", beforeState, "after", after)
			}
			if err := os.RemoveAll(plain.base); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(snapshot, plain.base); err != nil {
				t.Fatal(err)
			}
		}
		if a, b := plain.state(t), wrapped.state(t); !sameState(a, b) {
			t.Errorf("%s: the worlds differ after it", what)
			diffStates(t, "without the drop-in", a, "through it", b)
		}
	}
}

// wcCapture captures a tree exactly, treetx's lock files (beside the trees
// of a transaction inside it) left out.
func wcCapture(t *testing.T, dir string) treeimage.Image {
	t.Helper()
	return treeimage.MustCapture(t, dir, treeimage.Options{Ignore: func(p string) bool {
		return strings.HasPrefix(filepath.Base(p), ".#treetx.")
	}})
}
