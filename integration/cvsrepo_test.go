package integration

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/testenv"
	"github.com/treetx/treetx/internal/treeimage"
)

// This file builds real CVS repositories for the CVS and RCS tests, runs
// cvs, and checks a repository with CVS's own tools.

// cvsShape is the layout of a repository: every module has every directory
// (listed parents first), and every directory files f1.c..fN.c.
type cvsShape struct {
	name    string
	modules []string
	dirs    []string
	files   int
	lines   int
}

var (
	// cvsSmall: 3 modules x 4 directories (one nested) x 5 files.
	cvsSmall = cvsShape{name: "small", modules: []string{"m1", "m2", "m3"}, dirs: []string{"d1", "d2", "d3", "d3/d4"}, files: 5, lines: 20}
	// cvsLarge: 1 module x 10 directories (nested up to three deep) x 30
	// files: a commit or a tag of all of it takes long enough to be
	// killed in the middle.
	cvsLarge = cvsShape{name: "large", modules: []string{"big"}, dirs: []string{"a", "a/b", "a/b/c", "d", "e", "e/f", "g", "h", "h/i", "j"}, files: 30, lines: 40}
)

// fileCount is the number of f*.c files a fresh import of the shape holds.
func (s cvsShape) fileCount() int { return len(s.modules) * len(s.dirs) * s.files }

// cvsTemplate is a repository of one shape, built once per test binary and
// copied (cp -a) for each test.
type cvsTemplate struct {
	once  sync.Once
	dir   string            // holds root/ (the repository) and work/ (a working copy of every module)
	files map[string]string // what a checkout of every module yields: "m1/d1/f1.c" -> content
	err   error
}

var cvsTemplates sync.Map // shape name -> *cvsTemplate

// cvsTemplateFor builds the shape's repository the first time it is asked
// for: cvs init; LogHistory=TMAR set in CVSROOT/config (the Debian default,
// written out so that a checkout never appends to CVSROOT/history, whatever
// the distribution's default); cvs import of each module; then, from a
// checkout of all modules, a commit that changes f1.c in every directory, a
// tag REL_1 over everything, and a commit that adds new.c to the first
// directory, removes f5.c from the second (to the Attic) and changes f2.c
// in the last, in every module.
func cvsTemplateFor(t *testing.T, s cvsShape) *cvsTemplate {
	t.Helper()
	testenv.Require(t, testenv.CVS)
	v, _ := cvsTemplates.LoadOrStore(s.name, &cvsTemplate{})
	tm := v.(*cvsTemplate)
	tm.once.Do(func() {
		// Beside the binary TestMain built: removed when the tests end.
		tm.dir = filepath.Join(filepath.Dir(treetxPath), "cvs-template-"+s.name)
		tm.files, tm.err = buildCVSTemplate(tm.dir, s)
	})
	if tm.err != nil {
		t.Fatalf("build the %s CVS repository: %v", s.name, tm.err)
	}
	return tm
}

// cvsLine is line i of file path (relative to the module root) in module
// mod, as imported.
func cvsLine(mod, path string, i int) string {
	return fmt.Sprintf("%s/%s line %d: int v%d = %d;\n", mod, path, i, i, i*7)
}

func buildCVSTemplate(dir string, s cvsShape) (map[string]string, error) {
	root, work, home := filepath.Join(dir, "root"), filepath.Join(dir, "work"), dir
	for _, d := range []string{work, filepath.Join(dir, "src"), filepath.Join(dir, "admin")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	run := func(wd string, args ...string) error {
		ctx, cancel := context.WithTimeout(context.Background(), cvsTimeout)
		defer cancel()
		out, err := cvsExec(ctx, wd, home, nil, args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("cvs %q in %s: %v\n%s", args, wd, err, out)
		}
		return nil
	}
	if err := run(dir, "-d", root, "init"); err != nil {
		return nil, err
	}
	admin := filepath.Join(dir, "admin")
	if err := run(admin, "-Q", "-d", root, "checkout", "-d", "CVSROOT", "CVSROOT"); err != nil {
		return nil, err
	}
	cfg := filepath.Join(admin, "CVSROOT", "config")
	b, err := os.ReadFile(cfg)
	if err != nil {
		return nil, err
	}
	b = regexp.MustCompile(`(?m)^#?LogHistory=.*$`).ReplaceAll(b, nil)
	b = append(b, "LogHistory=TMAR\n"...)
	if err := os.WriteFile(cfg, b, 0o644); err != nil {
		return nil, err
	}
	if err := run(filepath.Join(admin, "CVSROOT"), "-Q", "-d", root, "commit", "-m", "log tags, commits, adds, removes"); err != nil {
		return nil, err
	}
	for _, mod := range s.modules {
		src := filepath.Join(dir, "src", mod)
		for _, d := range s.dirs {
			if err := os.MkdirAll(filepath.Join(src, d), 0o755); err != nil {
				return nil, err
			}
			for n := 1; n <= s.files; n++ {
				var sb strings.Builder
				p := fmt.Sprintf("%s/f%d.c", d, n)
				for i := 1; i <= s.lines; i++ {
					sb.WriteString(cvsLine(mod, p, i))
				}
				if err := os.WriteFile(filepath.Join(src, p), []byte(sb.String()), 0o644); err != nil {
					return nil, err
				}
			}
		}
		if err := run(src, "-Q", "-d", root, "import", "-m", "initial import of "+mod, mod, "vendor", "start"); err != nil {
			return nil, err
		}
	}
	mods := s.modules
	if err := run(work, append([]string{"-Q", "-d", root, "checkout"}, mods...)...); err != nil {
		return nil, err
	}
	appendTo := func(p, text string) error {
		f, err := os.OpenFile(filepath.Join(work, p), os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return err
		}
		_, err = f.WriteString(text)
		return errors.Join(err, f.Close())
	}
	for _, mod := range mods {
		for _, d := range s.dirs {
			if err := appendTo(mod+"/"+d+"/f1.c", "/* change 1 */\n"); err != nil {
				return nil, err
			}
		}
	}
	if err := run(work, append([]string{"-Q", "-d", root, "commit", "-m", "change 1"}, mods...)...); err != nil {
		return nil, err
	}
	if err := run(work, append([]string{"-Q", "-d", root, "tag", "REL_1"}, mods...)...); err != nil {
		return nil, err
	}
	first, second, last := s.dirs[0], s.dirs[1], s.dirs[len(s.dirs)-1]
	for _, mod := range mods {
		if err := os.WriteFile(filepath.Join(work, mod, first, "new.c"), []byte("/* new in "+mod+" */\n"), 0o644); err != nil {
			return nil, err
		}
		if err := run(filepath.Join(work, mod, first), "-Q", "-d", root, "add", "new.c"); err != nil {
			return nil, err
		}
		if err := os.Remove(filepath.Join(work, mod, second, "f5.c")); err != nil {
			return nil, err
		}
		if err := run(filepath.Join(work, mod, second), "-Q", "-d", root, "remove", "f5.c"); err != nil {
			return nil, err
		}
		if err := appendTo(mod+"/"+last+"/f2.c", "/* change 2 */\n"); err != nil {
			return nil, err
		}
	}
	if err := run(work, append([]string{"-Q", "-d", root, "commit", "-m", "change 2"}, mods...)...); err != nil {
		return nil, err
	}
	return readCheckout(work)
}

// readCheckout returns the files of a checkout, CVS administrative
// directories left out, by slash path relative to dir.
func readCheckout(dir string) (map[string]string, error) {
	files := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && d.Name() == "CVS" {
			return filepath.SkipDir
		}
		if !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		files[filepath.ToSlash(rel)] = string(b)
		return nil
	})
	return files, err
}

// cvsEnviron is the environment cvs runs with in these tests: the test's,
// without the CVS variables a developer may have set, with HOME (where
// ~/.cvsrc would be read, and what history lines are relative to) set to
// home, plus extra.
func cvsEnviron(home string, extra ...string) []string {
	var e []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "CVSROOT", "CVS_SERVER", "CVS_RSH", "CVSREAD", "CVSIGNORE", "CVSWRAPPERS", "CVSEDITOR", "CVS_PASSFILE", "CVSUMASK", "HOME",
			"TREETX", "TREETX_CVSROOT", "TREETX_CVS_CONF", "TREETX_REAL_CVS":
			continue
		}
		e = append(e, kv)
	}
	return append(append(e, "HOME="+home), extra...)
}

// cvsTimeout bounds a cvs the tests run to completion: a cvs that finds
// another's lock in the repository waits for it for ever, 30s at a time.
const cvsTimeout = time.Minute

// cvsExec is the command "cvs ARGS" in dir, killed when ctx is done.
func cvsExec(ctx context.Context, dir, home string, cred *syscall.Credential, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "cvs", args...)
	cmd.Dir = dir
	cmd.Env = cvsEnviron(home)
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	return cmd
}

// cvsRepo is a copy of a template, or of another cvsRepo: the repository
// at BASE/parent/tree and a working copy of every module at BASE/work
// (BASE/work/m1, ...), whose CVS/Root files name the copy. cvs runs with
// HOME=BASE, so that the history lines of two copies read the same.
type cvsRepo struct {
	shape  cvsShape
	base   string
	parent string // the repository's parent: treetx's names go there
	root   string // the repository
	work   string
	files  map[string]string // what a checkout of every module yields
}

// newCVSRepo copies the shape's template into a new temporary directory.
func newCVSRepo(t *testing.T, s cvsShape) *cvsRepo {
	t.Helper()
	tm := cvsTemplateFor(t, s)
	return copyCVSRepo(t, s, t.TempDir(), filepath.Join(tm.dir, "root"), filepath.Join(tm.dir, "work"), tm.files)
}

// newCVSRepoIn copies the shape's template as newCVSRepo does, then puts
// the repository at parent/tree instead (parent is made if missing: on a
// file system of its own, say).
func newCVSRepoIn(t *testing.T, s cvsShape, parent string) *cvsRepo {
	t.Helper()
	r := newCVSRepo(t, s)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(parent, "tree")
	cpA(t, r.root, root)
	r.parent, r.root = parent, root
	r.setRoot(t)
	return r
}

// copy makes another copy of r, as r is now: cp -a of everything in its
// base directory (the repository, the working copy, files to import...) to
// a new temporary directory.
func (r *cvsRepo) copy(t *testing.T) *cvsRepo {
	t.Helper()
	c := &cvsRepo{shape: r.shape, base: t.TempDir(), files: maps.Clone(r.files)}
	c.parent, c.work = filepath.Join(c.base, "parent"), filepath.Join(c.base, "work")
	c.root = filepath.Join(c.parent, "tree")
	for _, name := range listing(t, r.base) {
		cpA(t, filepath.Join(r.base, name), filepath.Join(c.base, name))
	}
	c.setRoot(t)
	return c
}

func copyCVSRepo(t *testing.T, s cvsShape, base, root, work string, files map[string]string) *cvsRepo {
	t.Helper()
	r := &cvsRepo{shape: s, base: base, parent: filepath.Join(base, "parent"), work: filepath.Join(base, "work"), files: maps.Clone(files)}
	r.root = filepath.Join(r.parent, "tree")
	if err := os.Mkdir(r.parent, 0o755); err != nil {
		t.Fatal(err)
	}
	cpA(t, root, r.root)
	cpA(t, work, r.work)
	r.setRoot(t)
	return r
}

// setRoot points every CVS/Root of the working copy at r.root.
func (r *cvsRepo) setRoot(t *testing.T) {
	t.Helper()
	err := filepath.WalkDir(r.work, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.Name() != "Root" || filepath.Base(filepath.Dir(p)) != "CVS" {
			return err
		}
		return os.WriteFile(p, []byte(r.root+"\n"), 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func cpA(t *testing.T, from, to string) {
	t.Helper()
	if out, err := exec.Command("cp", "-a", from, to).CombinedOutput(); err != nil {
		t.Fatalf("cp -a %s %s: %v\n%s", from, to, err, out)
	}
}

// path is a path inside the repository.
func (r *cvsRepo) path(rel string) string { return filepath.Join(r.root, filepath.FromSlash(rel)) }

// cvsIn runs cvs ARGS in dir (relative to the working copy unless
// absolute) as root, and returns its combined output and exit status.
func (r *cvsRepo) cvsIn(t *testing.T, dir string, cred *syscall.Credential, args ...string) (string, int) {
	t.Helper()
	if !filepath.IsAbs(dir) {
		dir = filepath.Join(r.work, dir)
	}
	ctx, cancel := context.WithTimeout(context.Background(), cvsTimeout)
	defer cancel()
	out, err := cvsExec(ctx, dir, r.base, cred, args...).CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("cvs %q ran %v and was killed: it hangs (waiting for a CVS lock?)\n%s", args, cvsTimeout, out)
	}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("cvs %q: %v", args, err)
	}
	if err != nil {
		return string(out), ee.ExitCode()
	}
	return string(out), 0
}

// cvs runs cvs ARGS in the working copy, as root; it must succeed.
func (r *cvsRepo) cvs(t *testing.T, args ...string) string {
	t.Helper()
	out, code := r.cvsIn(t, "", nil, args...)
	if code != 0 {
		t.Fatalf("cvs %q exited %d:\n%s", args, code, out)
	}
	return out
}

// appendTo appends text to files of the working copy.
func (r *cvsRepo) appendTo(t *testing.T, text string, paths ...string) {
	t.Helper()
	for _, p := range paths {
		f, err := os.OpenFile(filepath.Join(r.work, filepath.FromSlash(p)), os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		_, err = f.WriteString(text)
		if err := errors.Join(err, f.Close()); err != nil {
			t.Fatal(err)
		}
		if _, ok := r.files[p]; ok {
			r.files[p] += text
		}
	}
}

// editAdmin appends text to the administrative file CVSROOT/NAME the way an
// administrator does: checkout of CVSROOT, edit, commit.
func (r *cvsRepo) editAdmin(t *testing.T, name, text string) {
	t.Helper()
	dir := t.TempDir()
	r.cvsIn(t, dir, nil, "-Q", "-d", r.root, "checkout", "-d", "CVSROOT", "CVSROOT")
	p := filepath.Join(dir, "CVSROOT", name)
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, append(b, text...), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, code := r.cvsIn(t, filepath.Join(dir, "CVSROOT"), nil, "-Q", "-d", r.root, "commit", "-m", "edit "+name); code != 0 {
		t.Fatalf("commit CVSROOT/%s: exit %d\n%s", name, code, out)
	}
}

// forNobody hands the repository, its parent and the working copy to user
// nobody and makes their ancestors traversable; cvs then runs with HOME
// BASE (readable by all).
func (r *cvsRepo) forNobody(t *testing.T) *syscall.Credential {
	t.Helper()
	testenv.Require(t, testenv.Root)
	for d := r.base; d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(d, fi.Mode().Perm()|0o055); err != nil {
			t.Fatal(err)
		}
	}
	sh(t, nil, fmt.Sprintf("chown -R -h %d:%d %q %q", nobodyID, nobodyID, r.parent, r.work))
	return &syscall.Credential{Uid: nobodyID, Gid: nobodyID}
}

const nobodyID = 65534

// cvsAdminCred is root with the group _cvsadmin among its groups, when
// that group exists: then only its members may run cvs admin (Debian makes
// it), and root is not one.
func cvsAdminCred(t *testing.T) *syscall.Credential {
	t.Helper()
	testenv.Require(t, testenv.Root)
	c := &syscall.Credential{Uid: 0, Gid: 0}
	if g, err := user.LookupGroup("_cvsadmin"); err == nil {
		gid, err := strconv.Atoi(g.Gid)
		if err != nil {
			t.Fatal(err)
		}
		c.Groups = []uint32{uint32(gid)}
	}
	return c
}

// ---- reading ,v files ----

var (
	rcsHead    = regexp.MustCompile(`(?m)^head\s+([0-9.]*);`)
	rcsSymbols = regexp.MustCompile(`(?ms)^symbols((?:\s+[^;:\s]+:[0-9.]+)*);`)
)

// headRev is the head revision a ,v file records.
func headRev(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	m := rcsHead.FindSubmatch(b)
	if m == nil {
		t.Fatalf("%s: no head", path)
	}
	return string(m[1])
}

// symbols lists the symbols (tags) of a ,v file, as "NAME:REV".
func symbols(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	m := rcsSymbols.FindSubmatch(b)
	if m == nil {
		t.Fatalf("%s: no symbols", path)
	}
	return strings.Fields(string(m[1]))
}

func hasSymbol(t *testing.T, path, name string) bool {
	t.Helper()
	return slices.ContainsFunc(symbols(t, path), func(s string) bool { return strings.HasPrefix(s, name+":") })
}

// rcsFiles lists the ,v files under dir (Attic included), relative to dir.
func rcsFiles(t *testing.T, dir string) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() && strings.HasSuffix(d.Name(), ",v") {
			rel, _ := filepath.Rel(dir, p)
			files = append(files, filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// ---- checking a repository with CVS's own tools ----

// check runs CVS's own tools on the repository: cvs rlog of every module
// exits 0; a fresh checkout of every module, into a new directory, holds
// exactly want; cvs status there finds every file Up-to-date.
func (r *cvsRepo) check(t *testing.T, want map[string]string) {
	t.Helper()
	mods := r.shape.modules
	if out, code := r.cvsIn(t, t.TempDir(), nil, append([]string{"-d", r.root, "rlog"}, mods...)...); code != 0 || strings.Contains(out, "aborted") {
		t.Errorf("cvs rlog exited %d:\n%s", code, tail(out, 20))
	}
	co := t.TempDir()
	if out, code := r.cvsIn(t, co, nil, append([]string{"-Q", "-d", r.root, "checkout"}, mods...)...); code != 0 {
		t.Errorf("a fresh cvs checkout exited %d:\n%s", code, out)
		return
	}
	got, err := readCheckout(co)
	if err != nil {
		t.Fatal(err)
	}
	diffFiles(t, "a fresh checkout", want, got)
	out, code := r.cvsIn(t, co, nil, append([]string{"-d", r.root, "status"}, mods...)...)
	if code != 0 {
		t.Errorf("cvs status exited %d:\n%s", code, tail(out, 20))
	}
	statuses := regexp.MustCompile(`Status: (.*)`).FindAllStringSubmatch(out, -1)
	upToDate := 0
	for _, s := range statuses {
		if s[1] == "Up-to-date" {
			upToDate++
		} else {
			t.Errorf("cvs status in a fresh checkout: Status: %s", s[1])
		}
	}
	if upToDate != len(want) {
		t.Errorf("cvs status: %d files Up-to-date, want %d", upToDate, len(want))
	}
}

// diffFiles reports how got differs from want (path -> content).
func diffFiles(t *testing.T, what string, want, got map[string]string) {
	t.Helper()
	n := 0
	for _, p := range slices.Sorted(maps.Keys(want)) {
		g, ok := got[p]
		switch {
		case !ok:
			t.Errorf("%s lacks %s", what, p)
		case g != want[p]:
			t.Errorf("%s: %s holds %q, want %q", what, p, tail(g, 2), tail(want[p], 2))
		default:
			continue
		}
		if n++; n == 10 {
			t.Fatalf("%s: too many differences", what)
		}
	}
	for _, p := range slices.Sorted(maps.Keys(got)) {
		if _, ok := want[p]; !ok {
			t.Errorf("%s holds %s, which it should not", what, p)
		}
	}
}

// tail is the last n lines of s.
func tail(s string, n int) string {
	lines := strings.SplitAfter(s, "\n")
	if len(lines) > n+1 {
		lines = lines[len(lines)-n-1:]
	}
	return strings.Join(lines, "")
}

// ---- comparing a wrapped run with an unwrapped one ----

// cvsTimes are what CVS and RCS write that depends on the time of the
// run: the date of each revision and the commitid (made from the time and
// the pid) in ,v files, and the hex time of each CVSROOT/history line.
var cvsTimes = []struct {
	applies func(path string) bool
	re      *regexp.Regexp
	repl    string
}{
	{isRCSFile, regexp.MustCompile(`(?m)^date([ \t]+)[0-9.]+;`), "date${1}DATE;"},
	{isRCSFile, regexp.MustCompile(`(?m)^commitid([ \t]+)[0-9A-Za-z]+;`), "commitid${1}ID;"},
	{func(p string) bool { return p == "CVSROOT/history" }, regexp.MustCompile(`(?m)^([A-Za-z])[0-9a-f]{8}\|`), "${1}TIME|"},
}

func isRCSFile(p string) bool { return strings.HasSuffix(p, ",v") }

// normalize replaces the times in the content of the file at rel.
func normalize(rel string, b []byte) []byte {
	for _, n := range cvsTimes {
		if n.applies(rel) {
			b = n.re.ReplaceAll(b, []byte(n.repl))
		}
	}
	return b
}

// assertSameOutcome checks that the tree at wrappedRoot (the operation run
// under treetx) is the tree at plainRoot (the same operation, without
// treetx, on a copy of the same tree): the same entries, types, modes,
// owners and symlink targets, and the same file contents once the times
// CVS writes into them are normalized. Times of files and directories are
// compared with the tree before: an entry must have kept its mtime in one
// run exactly when it kept it in the other.
func assertSameOutcome(t *testing.T, before treeimage.Image, plainRoot, wrappedRoot string) {
	t.Helper()
	plain, wrapped := capture(t, plainRoot), capture(t, wrappedRoot)
	old := map[string]treeimage.Entry{}
	for _, e := range before {
		old[e.Path] = e
	}
	w := map[string]treeimage.Entry{}
	for _, e := range wrapped {
		w[e.Path] = e
	}
	for _, p := range plain {
		g, ok := w[p.Path]
		if !ok {
			t.Errorf("only without treetx: %s", p.Path)
			continue
		}
		delete(w, p.Path)
		if p.Type != g.Type || p.Mode != g.Mode || p.UID != g.UID || p.GID != g.GID || p.Target != g.Target {
			t.Errorf("%s: %s %v %d:%d %q without treetx, %s %v %d:%d %q with it", p.Path, p.Type, p.Mode, p.UID, p.GID, p.Target, g.Type, g.Mode, g.UID, g.GID, g.Target)
		}
		if o, ok := old[p.Path]; ok && (o.MtimeNs == p.MtimeNs) != (o.MtimeNs == g.MtimeNs) {
			t.Errorf("%s: mtime kept by one run and not by the other (before %d, without treetx %d, with it %d)", p.Path, o.MtimeNs, p.MtimeNs, g.MtimeNs)
		}
		if p.Hash == g.Hash {
			continue
		}
		a, err := os.ReadFile(filepath.Join(plainRoot, filepath.FromSlash(p.Path)))
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(wrappedRoot, filepath.FromSlash(p.Path)))
		if err != nil {
			t.Fatal(err)
		}
		if na, nb := normalize(p.Path, a), normalize(p.Path, b); !bytes.Equal(na, nb) {
			t.Errorf("%s differs beyond times:\nwithout treetx:\n%s\nwith treetx:\n%s", p.Path, firstDiff(na, nb), firstDiff(nb, na))
		}
	}
	for _, p := range slices.Sorted(maps.Keys(w)) {
		t.Errorf("only with treetx: %s", p)
	}
}

// firstDiff shows a's lines around the first line where a and b differ.
func firstDiff(a, b []byte) string {
	la, lb := strings.Split(string(a), "\n"), strings.Split(string(b), "\n")
	for i := range la {
		if i >= len(lb) || la[i] != lb[i] {
			return strings.Join(la[max(0, i-2):min(len(la), i+3)], "\n")
		}
	}
	return "(a prefix of the other)"
}

// ---- watching CVS write ----

// rewriteWatch counts the ,v files renamed into place under a tree, which
// is how CVS and RCS replace every ,v file they change.
type rewriteWatch struct {
	n      atomic.Int64
	notify chan struct{} // a value after each event read
	stop   func()
}

// watchRewrites watches every directory under root (inotify, IN_MOVED_TO)
// until stop.
func watchRewrites(t *testing.T, root string) *rewriteWatch {
	t.Helper()
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		t.Fatalf("inotify_init1: %v", err)
	}
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		if _, err := unix.InotifyAddWatch(fd, p, unix.IN_MOVED_TO); err != nil {
			return fmt.Errorf("inotify_add_watch %s: %w", p, err)
		}
		return nil
	})
	if err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "inotify") // non-blocking: Close ends a Read
	w := &rewriteWatch{notify: make(chan struct{}, 1)}
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, err := f.Read(buf)
			if err != nil {
				return
			}
			for b := buf[:n]; len(b) >= unix.SizeofInotifyEvent; {
				nameLen := int(binary.NativeEndian.Uint32(b[12:16]))
				name := string(bytes.TrimRight(b[unix.SizeofInotifyEvent:unix.SizeofInotifyEvent+nameLen], "\x00"))
				b = b[unix.SizeofInotifyEvent+nameLen:]
				if strings.HasSuffix(name, ",v") {
					w.n.Add(1)
				}
			}
			select {
			case w.notify <- struct{}{}:
			default:
			}
		}
	}()
	w.stop = func() { f.Close() }
	t.Cleanup(w.stop)
	return w
}

// await waits until n ,v files were renamed into place; it fails the test
// if gone reports that the writer exited first, or after two minutes (a
// hang).
func (w *rewriteWatch) await(t *testing.T, n int64, gone func() bool) {
	t.Helper()
	deadline := time.After(2 * time.Minute)
	for w.n.Load() < n {
		select {
		case <-w.notify:
		case <-deadline:
			t.Fatalf("%d ,v files renamed into place in 2 minutes, want %d", w.n.Load(), n)
		case <-time.After(20 * time.Millisecond):
			if gone() && w.n.Load() < n {
				t.Fatalf("the command exited after it renamed %d ,v files, before %d", w.n.Load(), n)
			}
		}
	}
}

// children lists the pids of pid's children (of all its threads).
func children(t *testing.T, pid int) []int {
	t.Helper()
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, task := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, task.Name()))
		if err != nil {
			continue // the thread is gone
		}
		for _, f := range strings.Fields(string(b)) {
			n, err := strconv.Atoi(f)
			if err != nil {
				t.Fatal(err)
			}
			pids = append(pids, n)
		}
	}
	return pids
}

// exitWatch is a set of processes (their pidfds) whose exit a test waits
// for: a pid reused by another process after them is not mistaken for one
// of theirs.
type exitWatch []int

// watchExits opens pidfds of pids while they are still someone's children;
// a pid already gone has exited.
func watchExits(t *testing.T, pids []int) exitWatch {
	t.Helper()
	var w exitWatch
	for _, pid := range pids {
		fd, err := unix.PidfdOpen(pid, 0)
		if errors.Is(err, unix.ESRCH) {
			continue
		}
		if err != nil {
			t.Fatalf("pidfd_open %d: %v", pid, err)
		}
		w = append(w, fd)
	}
	t.Cleanup(func() {
		for _, fd := range w {
			unix.Close(fd)
		}
	})
	return w
}

// wait waits until every process of w has exited (a zombie has). It fails
// the test after limit, which only a hang reaches.
func (w exitWatch) wait(t *testing.T, what string, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for _, fd := range w {
		for {
			ms := time.Until(deadline).Milliseconds()
			if ms <= 0 {
				t.Fatalf("%s did not exit within %v", what, limit)
			}
			n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, int(min(ms, 1000)))
			if err != nil && err != unix.EINTR {
				t.Fatalf("poll pidfd: %v", err)
			}
			if n > 0 {
				break
			}
		}
	}
}

// bigText is n bytes of text that compresses badly, the same for the same
// seed: lines of 64 hex digits.
func bigText(seed string, n int) string {
	var h uint64
	for _, c := range seed {
		h = h*131 + uint64(c)
	}
	rng := rand.New(rand.NewPCG(h, 0x7265706f))
	var sb strings.Builder
	for sb.Len() < n {
		fmt.Fprintf(&sb, "%016x%016x%016x%016x\n", rng.Uint64(), rng.Uint64(), rng.Uint64(), rng.Uint64())
	}
	return sb.String()
}

// ---- README commands ----

// doc takes a command of the README's CVS section, /srv/cvsroot standing
// for r.root, to be run in dir (relative to the working copy unless
// absolute: globs match there).
func (r *cvsRepo) doc(t *testing.T, line, dir string) docCmd {
	t.Helper()
	return readmeCmd(t, line, r.dir(dir), "/srv/cvsroot", r.root)
}

// dir resolves a directory relative to the working copy.
func (r *cvsRepo) dir(dir string) string {
	if filepath.IsAbs(dir) {
		return dir
	}
	return filepath.Join(r.work, dir)
}

// runDoc runs a "treetx ..." command in dir as cred.
func (r *cvsRepo) runDoc(t *testing.T, c docCmd, dir string, cred *syscall.Credential) result {
	t.Helper()
	if c.argv[0] != "treetx" {
		t.Fatalf("%q is not a treetx command", c.argv)
	}
	return invoke(t, invocation{args: c.argv[1:], env: append(cvsEnviron(r.base), c.env...), dir: r.dir(dir), cred: cred})
}

// plainDoc runs the cvs command of a "treetx run ROOT -- cvs ..." command
// without treetx, in dir as cred, and returns its output and exit status.
func (r *cvsRepo) plainDoc(t *testing.T, c docCmd, dir string, cred *syscall.Credential) (string, int) {
	t.Helper()
	argv := c.after(t)
	if argv[0] != "cvs" {
		t.Fatalf("%q does not run cvs", argv)
	}
	return r.cvsIn(t, r.dir(dir), cred, argv[1:]...)
}

// raw is "treetx run ROOT -- cvs ARGS", for commands the README does not
// show.
func (r *cvsRepo) raw(args ...string) docCmd {
	return docCmd{argv: append([]string{"treetx", "run", r.root, "--", "cvs"}, args...)}
}
