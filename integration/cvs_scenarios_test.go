package integration

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/treetx/treetx/internal/testenv"
	"github.com/treetx/treetx/internal/treeimage"
)

// cvsFailure is an operation that real CVS leaves half done when it fails
// part way: a repository is made ready for it (a fresh copy each time),
// run once without treetx to show the partial state, and once as the
// README shows it, "treetx run ROOT -- cvs ARGS", to show that the
// repository is then exactly as before.
type cvsFailure struct {
	name string
	// prepare makes a repository ready; it returns the credential cvs
	// (and treetx) runs with (nil: root) and the directory cvs runs in
	// ("": the working copy).
	prepare func(t *testing.T) (r *cvsRepo, cred *syscall.Credential, dir string)
	// line is the README's command.
	line string
	// partial checks that the unwrapped run left the repository half
	// changed, given cvs's output; it returns a one-line description.
	partial func(t *testing.T, r *cvsRepo, out string) string
	// beforeCheck runs, if set, after the rollback and before check:
	// to make room on a full file system, say.
	beforeCheck func(t *testing.T, r *cvsRepo)
}

// TestCVSPartialFailures: failures that CVS cannot undo, each shown first
// without treetx (the partial state is asserted) and then under treetx run
// (the repository, CVSROOT/history and CVSROOT/val-tags included, is byte
// for byte as before, and CVS's own tools find it whole).
func TestCVSPartialFailures(t *testing.T) {
	t.Parallel()
	testenv.Require(t, testenv.CVS)
	testenv.Require(t, testenv.Root)
	for _, tt := range cvsFailures() {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			plain, cred, dir := tt.prepare(t)
			out, code := plain.plainDoc(t, plain.doc(t, tt.line, dir), dir, cred)
			if code == 0 {
				t.Fatalf("without treetx, %s succeeded:\n%s", tt.line, out)
			}
			t.Logf("without treetx: cvs exited %d; %s", code, tt.partial(t, plain, out))

			r, cred, dir := tt.prepare(t)
			before := capture(t, r.root)
			beforeParent := listing(t, r.parent)
			res := r.runDoc(t, r.doc(t, tt.line, dir), dir, cred)
			wantCode(t, res, code)
			contains(t, "treetx's stderr", res.stderr, "rolled back")
			if strings.Contains(res.stderr, "lost") {
				t.Errorf("treetx reports lost content:\n%s", res.stderr)
			}
			treeimage.AssertEqual(t, "before", before, "after the rollback", capture(t, r.root))
			sameListing(t, r.parent, beforeParent, lockName("tree"))
			noLeftovers(t, r.parent, "tree")
			if tt.beforeCheck != nil {
				tt.beforeCheck(t, r)
			}
			r.check(t, r.files)
		})
	}
}

func cvsFailures() []cvsFailure {
	return []cvsFailure{
		{
			// As root with the group _cvsadmin: -n over files where the last
			// lacks revision 1.2. cvs admin writes the symbol into each file
			// in turn and aborts at the one it cannot.
			name: "admin -n over files where a later one lacks the revision",
			prepare: func(t *testing.T) (*cvsRepo, *syscall.Credential, string) {
				return newCVSRepo(t, cvsSmall), cvsAdminCred(t), ""
			},
			line: "treetx run /srv/cvsroot -- cvs -d /srv/cvsroot admin -nSTABLE:1.2 m1/d1/f1.c m2/d3/d4/f1.c m3/d2/f3.c",
			partial: func(t *testing.T, r *cvsRepo, out string) string {
				contains(t, "cvs's output", out, "revision `1.2' does not exist")
				for _, p := range []string{"m1/d1/f1.c,v", "m2/d3/d4/f1.c,v"} {
					if !hasSymbol(t, r.path(p), "STABLE") {
						t.Errorf("without treetx: %s lacks STABLE: the partial state is not what CVS left before", p)
					}
				}
				if hasSymbol(t, r.path("m3/d2/f3.c,v"), "STABLE") {
					t.Errorf("m3/d2/f3.c,v has STABLE")
				}
				return "STABLE written into m1/d1/f1.c,v and m2/d3/d4/f1.c,v, not m3/d2/f3.c,v"
			},
		},
		{
			// rtag processes each argument on its own: a taginfo script
			// refusing m1/d3 leaves m1/d1 and m1/d2 tagged, and
			// CVSROOT/val-tags and CVSROOT/history written.
			name: "rtag with a taginfo script refusing one directory",
			prepare: func(t *testing.T) (*cvsRepo, *syscall.Credential, string) {
				r := newCVSRepo(t, cvsSmall)
				r.editAdmin(t, "taginfo", `^m1/d3 sh -c "echo taginfo: refusing %p >&2; exit 1"`+"\n")
				return r, nil, ""
			},
			line: "treetx run /srv/cvsroot -- cvs -d /srv/cvsroot rtag REL_2 m1/d1 m1/d2 m1/d3",
			partial: func(t *testing.T, r *cvsRepo, out string) string {
				contains(t, "cvs's output", out, "taginfo: refusing m1/d3", "Pre-tag check failed")
				tagged := 0
				for _, d := range []string{"d1", "d2"} {
					for n := 1; n <= 4; n++ {
						if !hasSymbol(t, r.path(fmt.Sprintf("m1/%s/f%d.c,v", d, n)), "REL_2") {
							t.Errorf("without treetx: m1/%s/f%d.c,v lacks REL_2", d, n)
						}
						tagged++
					}
				}
				for _, p := range []string{"m1/d3/f1.c,v", "m1/d3/d4/f1.c,v"} {
					if hasSymbol(t, r.path(p), "REL_2") {
						t.Errorf("%s has REL_2", p)
					}
				}
				vt, _ := os.ReadFile(r.path("CVSROOT/val-tags"))
				contains(t, "CVSROOT/val-tags", string(vt), "REL_2 y")
				h, _ := os.ReadFile(r.path("CVSROOT/history"))
				contains(t, "CVSROOT/history", string(h), "|A|REL_2|m1/d1\n")
				return fmt.Sprintf("REL_2 in m1/d1 and m1/d2 (%d files checked), not in m1/d3; val-tags and history name REL_2", tagged)
			},
		},
		{
			// As user nobody, with the locks elsewhere (LockDir: else the
			// read-only directory stops cvs before it writes anything):
			// m1 and m2 are committed, m3/d3/d4 is read-only.
			name: "commit as a non-root user into a read-only directory",
			prepare: func(t *testing.T) (*cvsRepo, *syscall.Credential, string) {
				r := newCVSRepo(t, cvsSmall)
				locks := filepath.Join(r.base, "locks")
				if err := os.Mkdir(locks, 0o777); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(locks, 0o1777); err != nil {
					t.Fatal(err)
				}
				r.editAdmin(t, "config", "LockDir="+locks+"\n")
				r.appendTo(t, "/* by nobody */\n", "m1/d1/f3.c", "m2/d2/f3.c", "m3/d3/d4/f3.c")
				cred := r.forNobody(t)
				if err := os.Chmod(r.path("m3/d3/d4"), 0o555); err != nil {
					t.Fatal(err)
				}
				// What a checkout yields is the repository's content.
				for _, p := range []string{"m1/d1/f3.c", "m2/d2/f3.c", "m3/d3/d4/f3.c"} {
					r.files[p] = strings.TrimSuffix(r.files[p], "/* by nobody */\n")
				}
				return r, cred, ""
			},
			line: `treetx run /srv/cvsroot -- cvs -d /srv/cvsroot commit -m "fix" m1 m2 m3`,
			partial: func(t *testing.T, r *cvsRepo, out string) string {
				contains(t, "cvs's output", out, "Permission denied")
				for p, want := range map[string]string{"m1/d1/f3.c,v": "1.2", "m2/d2/f3.c,v": "1.2", "m3/d3/d4/f3.c,v": "1.1"} {
					if got := headRev(t, r.path(p)); got != want {
						t.Errorf("without treetx: %s head %s, want %s", p, got, want)
					}
				}
				return "m1/d1/f3.c,v and m2/d2/f3.c,v at 1.2, m3/d3/d4/f3.c,v still 1.1"
			},
		},
		{
			// The repository on a small ext4 with room for about half the
			// new revisions: 20 files each grow by 256 KiB.
			name: "commit fills up the file system",
			prepare: func(t *testing.T) (*cvsRepo, *syscall.Credential, string) {
				r := newCVSRepoIn(t, cvsSmall, filepath.Join(fsImage(t, "ext4", 16), "parent"))
				n := 0
				for p := range r.files {
					if strings.HasPrefix(p, "m1/") && strings.Contains(p, "/f") {
						r.appendTo(t, bigText(p, 256<<10), p)
						n++
					}
				}
				// A checkout after the rollback yields the old content.
				r.files = maps.Clone(cvsTemplateFor(t, cvsSmall).files)
				fill(t, filepath.Dir(r.parent), int64(n)*(256<<10)*11/20)
				return r, nil, ""
			},
			line: `treetx run /srv/cvsroot -- cvs -d /srv/cvsroot commit -m "fix" m1 m2 m3`,
			partial: func(t *testing.T, r *cvsRepo, out string) string {
				contains(t, "cvs's output", out, "No space left on device")
				var changed []string
				for _, d := range cvsSmall.dirs {
					for n := 1; n <= 5; n++ {
						if d != "d2" || n != 5 {
							changed = append(changed, fmt.Sprintf("m1/%s/f%d.c", d, n))
						}
					}
				}
				return countHeads(t, r, changed)
			},
			beforeCheck: func(t *testing.T, r *cvsRepo) {
				if err := os.Remove(filepath.Join(filepath.Dir(r.parent), "filler")); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			// cvs import of a vendor release of m2 that brings 20 new files
			// of 256 KiB, with room for about half: new ,v files are written
			// in place, not renamed, in new directories.
			name: "import fills up the file system",
			prepare: func(t *testing.T) (*cvsRepo, *syscall.Credential, string) {
				r := newCVSRepoIn(t, cvsSmall, filepath.Join(fsImage(t, "ext4", 16), "parent"))
				src := filepath.Join(r.base, "src")
				for _, d := range []string{"a", "b", "c", "c/d"} {
					for n := 1; n <= 5; n++ {
						p := fmt.Sprintf("%s/v%d.c", d, n)
						writeFiles(t, src, map[string]string{p: bigText(p, 256<<10)})
					}
				}
				fill(t, filepath.Dir(r.parent), 20*(256<<10)*11/20)
				return r, nil, src
			},
			line: `treetx run /srv/cvsroot -- cvs -d /srv/cvsroot import -m "vendor drop" m2 vendor start2`,
			partial: func(t *testing.T, r *cvsRepo, out string) string {
				contains(t, "cvs's output", out, "No space left on device")
				n := 0
				for _, d := range []string{"a", "b", "c"} {
					if exists(r.path("m2/" + d)) {
						n += len(rcsFiles(t, r.path("m2/"+d)))
					}
				}
				if n == 0 || n >= 20 {
					t.Errorf("without treetx: the import left %d of 20 new ,v files, want some but not all", n)
				}
				return fmt.Sprintf("m2 holds %d of the 20 new ,v files", n)
			},
			beforeCheck: func(t *testing.T, r *cvsRepo) {
				if err := os.Remove(filepath.Join(filepath.Dir(r.parent), "filler")); err != nil {
					t.Fatal(err)
				}
			},
		},
	}
}

// countHeads counts the files (working copy paths) whose ,v file's head
// revision moved past what the template has, and checks that some did and
// some did not.
func countHeads(t *testing.T, r *cvsRepo, files []string) string {
	t.Helper()
	tmpl := filepath.Join(cvsTemplateFor(t, r.shape).dir, "root")
	moved := 0
	for _, p := range files {
		if headRev(t, r.path(p+",v")) != headRev(t, filepath.Join(tmpl, filepath.FromSlash(p+",v"))) {
			moved++
		}
	}
	if moved == 0 || moved == len(files) {
		t.Errorf("without treetx: %d of %d files committed, want some but not all", moved, len(files))
	}
	return fmt.Sprintf("%d of %d files committed", moved, len(files))
}

// TestCVSKilledMidOperation: SIGKILL, in the middle of a large commit and
// of a large tag (300 files: killed right after CVS renamed the 100th new
// ,v file into place), of cvs under treetx (treetx rolls back at once), or
// of treetx itself (cvs dies with it: the repository is left half changed,
// and treetx recover rolls it back). Either way the repository ends byte
// for byte as before, and a fresh checkout holds what it held.
func TestCVSKilledMidOperation(t *testing.T) {
	t.Parallel()
	testenv.Require(t, testenv.CVS)
	ops := []struct {
		name string
		// prepare changes the working copy; args are cvs's.
		prepare func(t *testing.T, r *cvsRepo)
		args    func(r *cvsRepo) []string
		// changed reports whether the ,v file at rel was changed.
		changed func(t *testing.T, r *cvsRepo, rel string) bool
	}{
		{
			name: "commit",
			prepare: func(t *testing.T, r *cvsRepo) {
				for p := range r.files {
					r.appendTo(t, "/* large commit */\n", p)
				}
			},
			args: func(r *cvsRepo) []string { return []string{"-Q", "-d", r.root, "commit", "-m", "large commit", "big"} },
			changed: func(t *testing.T, r *cvsRepo, rel string) bool {
				tmpl := filepath.Join(cvsTemplateFor(t, r.shape).dir, "root")
				return headRev(t, r.path(rel)) != headRev(t, filepath.Join(tmpl, rel))
			},
		},
		{
			name:    "tag",
			prepare: func(t *testing.T, r *cvsRepo) {},
			args:    func(r *cvsRepo) []string { return []string{"-Q", "-d", r.root, "tag", "LARGE", "big"} },
			changed: func(t *testing.T, r *cvsRepo, rel string) bool { return hasSymbol(t, r.path(rel), "LARGE") },
		},
	}
	// partial counts the ,v files the operation changed, outside the
	// Attic, and checks that it is some but not all.
	partial := func(t *testing.T, r *cvsRepo, changed func(*testing.T, *cvsRepo, string) bool) string {
		t.Helper()
		n, total := 0, 0
		for _, p := range rcsFiles(t, r.path("big")) {
			if strings.Contains(p, "Attic/") {
				continue
			}
			total++
			if changed(t, r, "big/"+p) {
				n++
			}
		}
		if n == 0 || n == total {
			t.Errorf("the killed operation changed %d of %d ,v files, want some but not all", n, total)
		}
		return fmt.Sprintf("%d of %d ,v files changed", n, total)
	}
	// The kill comes after CVS renamed this many ,v files into place.
	const killAfter = 100
	for _, op := range ops {
		// Without treetx: the kill leaves the repository half changed.
		t.Run(op.name+"/without treetx", func(t *testing.T) {
			t.Parallel()
			if testing.Short() {
				t.Skip("a demonstration (-short)")
			}
			r := newCVSRepo(t, cvsLarge)
			op.prepare(t, r)
			w := watchRewrites(t, r.root)
			cmd := cvsExec(context.Background(), r.work, r.base, nil, op.args(r)...)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			w.await(t, killAfter, func() bool { return processGone(cmd.Process.Pid) })
			cmd.Process.Kill()
			cmd.Wait()
			t.Logf("cvs %s killed without treetx: %s", op.name, partial(t, r, op.changed))
		})
		for _, victim := range []string{"cvs", "treetx", "treetx with SIGTERM"} {
			t.Run(op.name+"/kill "+victim, func(t *testing.T) {
				t.Parallel()
				if testing.Short() && victim == "treetx with SIGTERM" {
					t.Skip("-short")
				}
				r := newCVSRepo(t, cvsLarge)
				op.prepare(t, r)
				want := maps.Clone(cvsTemplateFor(t, cvsLarge).files)
				before := capture(t, r.root)
				w := watchRewrites(t, r.root)
				p := start(t, invocation{args: runArgs(r.root, append([]string{"cvs"}, op.args(r)...)), env: cvsEnviron(r.base), dir: r.work})
				w.await(t, killAfter, func() bool { return processGone(p.pid()) })
				kids := children(t, p.pid())
				if len(kids) != 1 {
					t.Fatalf("treetx has children %v, want one: cvs", kids)
				}
				cvsPID := kids[0]
				switch victim {
				case "treetx with SIGTERM":
					// Forwarded to cvs, which removes its locks and
					// exits non-zero: treetx rolls back.
					p.signal(t, syscall.SIGTERM)
					res := p.wait(t)
					if res.code == 0 || res.code == -1 {
						t.Errorf("treetx exited %d after SIGTERM, want cvs's failure", res.code)
					}
					contains(t, "treetx's stderr", res.stderr, "rolled back")
					t.Logf("cvs %s, SIGTERM to treetx: exit %d; %s", op.name, res.code, strings.TrimSpace(res.stderr))
				case "cvs":
					if err := syscall.Kill(cvsPID, syscall.SIGKILL); err != nil {
						t.Fatal(err)
					}
					res := p.wait(t)
					wantCode(t, res, 128+9)
					contains(t, "treetx's stderr", res.stderr, "killed by signal 9", "rolled back")
					if n := w.n.Load(); n >= int64(cvsLarge.fileCount()) {
						t.Errorf("cvs renamed %d ,v files into place: it was not killed in the middle", n)
					}
					// Nothing is left for recover to do.
					wantCode(t, treetx(t, nil, "recover", r.root), 0)
				default:
					p.signal(t, syscall.SIGKILL)
					if res := p.wait(t); res.code != -1 {
						t.Fatalf("treetx was not killed: %v", res)
					}
					waitFor(t, "cvs to die with treetx", time.Minute, func() bool { return processGone(cvsPID) })
					t.Logf("left by the killed cvs: %s", partial(t, r, op.changed))
					res := r.runDoc(t, r.doc(t, "treetx status /srv/cvsroot", ""), "", nil)
					wantCode(t, res, 3)
					contains(t, "treetx status", res.stdout, "needs recovery")
					wantCode(t, r.runDoc(t, r.doc(t, "treetx recover /srv/cvsroot", ""), "", nil), 0)
				}
				treeimage.AssertEqual(t, "before", before, "after", capture(t, r.root))
				noLeftovers(t, r.parent, "tree")
				r.check(t, want)
			})
		}
	}
}

// TestCVSWrappedEqualsUnwrapped: a commit, tag, rtag, import, admin and add
// of a directory that succeed under treetx leave exactly the repository
// the same operation leaves without treetx, run on a copy (cp -a) made
// before: the same entries, modes and owners, the same bytes but for the
// times CVS writes into files (revision dates and commitids in ,v files,
// the time of each CVSROOT/history line), and the same entries touched.
func TestCVSWrappedEqualsUnwrapped(t *testing.T) {
	t.Parallel()
	testenv.Require(t, testenv.CVS)
	readme := func(line string) func(t *testing.T, r *cvsRepo, dir string) docCmd {
		return func(t *testing.T, r *cvsRepo, dir string) docCmd { return r.doc(t, line, dir) }
	}
	tests := []struct {
		name string
		// prepare changes the working copy (or makes files to import)
		// before the copy is made.
		prepare func(t *testing.T, r *cvsRepo)
		dir     string // where cvs runs, relative to BASE
		cmd     func(t *testing.T, r *cvsRepo, dir string) docCmd
		cred    func(t *testing.T) *syscall.Credential
	}{
		{
			name: "commit",
			prepare: func(t *testing.T, r *cvsRepo) {
				r.appendTo(t, "/* wrapped or not */\n", "m1/d1/f2.c", "m2/d3/d4/f3.c", "m3/d2/f1.c")
				writeFiles(t, r.work, map[string]string{"m3/d1/added.c": "added\n"})
				r.cvs(t, "-Q", "-d", r.root, "add", "m3/d1/added.c")
				if err := os.Remove(filepath.Join(r.work, "m1/d3/f4.c")); err != nil {
					t.Fatal(err)
				}
				r.cvs(t, "-Q", "-d", r.root, "remove", "m1/d3/f4.c")
			},
			dir: "work",
			cmd: readme(`treetx run /srv/cvsroot -- cvs -d /srv/cvsroot commit -m "fix" m1 m2 m3`),
		},
		{
			name: "tag",
			dir:  "work",
			cmd:  readme("treetx run /srv/cvsroot -- cvs -d /srv/cvsroot tag -b BRANCH_1 m1 m2 m3"),
		},
		{
			name: "rtag",
			dir:  "work",
			cmd: func(t *testing.T, r *cvsRepo, dir string) docCmd {
				return r.raw("-Q", "-d", r.root, "rtag", "-r", "REL_1", "REL_1_1", "m2", "m3")
			},
		},
		{
			name: "import",
			prepare: func(t *testing.T, r *cvsRepo) {
				// A new vendor release of m2: changed, unchanged and new
				// files, and a new directory.
				src := filepath.Join(r.base, "src")
				files := map[string]string{"d5/n.c": "new dir\n"}
				for p, c := range r.files {
					if rest, ok := strings.CutPrefix(p, "m2/"); ok {
						files[rest] = c
					}
				}
				files["d1/f3.c"] += "/* vendor 2 */\n"
				files["d3/f6.c"] = "new file\n"
				writeFiles(t, src, files)
			},
			dir: "src",
			cmd: readme(`treetx run /srv/cvsroot -- cvs -d /srv/cvsroot import -m "vendor drop" m2 vendor start2`),
		},
		{
			name: "admin",
			dir:  "work",
			cmd: func(t *testing.T, r *cvsRepo, dir string) docCmd {
				return r.raw("-Q", "-d", r.root, "admin", "-ko", "-t-ACME sources", "m1", "m3/d2")
			},
			cred: cvsAdminCred,
		},
		{
			name: "add of a directory",
			prepare: func(t *testing.T, r *cvsRepo) {
				writeFiles(t, r.work, map[string]string{"m2/d3/newdir/": ""})
			},
			dir: "work",
			cmd: readme("treetx run /srv/cvsroot -- cvs -d /srv/cvsroot add m2/d3/newdir"),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := newCVSRepo(t, cvsSmall)
			if tt.prepare != nil {
				tt.prepare(t, r)
			}
			var cred *syscall.Credential
			if tt.cred != nil {
				cred = tt.cred(t)
			}
			before := capture(t, r.root)
			plain := r.copy(t)
			pdir := filepath.Join(plain.base, tt.dir)
			if out, code := plain.plainDoc(t, tt.cmd(t, plain, pdir), pdir, cred); code != 0 {
				t.Fatalf("without treetx, cvs exited %d:\n%s", code, out)
			}
			dir := filepath.Join(r.base, tt.dir)
			res := r.runDoc(t, tt.cmd(t, r, dir), dir, cred)
			wantCode(t, res, 0)
			if strings.Contains(res.stderr, "treetx") {
				t.Errorf("treetx wrote to stderr for a cvs that succeeded:\n%s", res.stderr)
			}
			noLeftovers(t, r.parent, "tree")
			if before.Equal(capture(t, r.root)) {
				t.Fatalf("the operation changed nothing")
			}
			assertSameOutcome(t, before, plain.root, r.root)
			if out, code := r.cvsIn(t, t.TempDir(), nil, "-d", r.root, "rlog", "m1", "m2", "m3"); code != 0 {
				t.Errorf("cvs rlog exited %d:\n%s", code, tail(out, 20))
			}
		})
	}
}

// TestCVSFileattrInPlace: cvs watch and cvs edit rewrite CVS/fileattr in
// place (same inode). A failed transaction doing both leaves every
// fileattr as it was, because treetx gives them real copies in a CVS
// repository; with --no-cvs-copies their old content is lost (exit 125):
// the copies are what makes it work.
func TestCVSFileattrInPlace(t *testing.T) {
	t.Parallel()
	testenv.Require(t, testenv.CVS)
	r := newCVSRepo(t, cvsSmall)
	r.cvs(t, "-Q", "-d", r.root, "watch", "on", "m1")
	if !exists(r.path("m1/d1/CVS/fileattr")) {
		t.Fatalf("cvs watch on made no m1/d1/CVS/fileattr")
	}
	before := capture(t, r.root)
	s := `cvs -Q -d "$T" watch add -a commit m1 && cvs -Q -d "$T" edit m1/d1/f1.c && exit 1`
	res := invoke(t, invocation{args: runArgs(r.root, script(s)), env: append(cvsEnviron(r.base), env(r.root, r.base)...), dir: r.work})
	wantCode(t, res, 1)
	if strings.Contains(res.stderr, "lost") {
		t.Errorf("treetx reports lost content:\n%s", res.stderr)
	}
	treeimage.AssertEqual(t, "before", before, "after the rollback", capture(t, r.root))
	noLeftovers(t, r.parent, "tree")

	// Without the copies, the same failure loses fileattr's old content:
	// cvs wrote it in place.
	res = invoke(t, invocation{args: runArgs(r.root, script(s), "--no-cvs-copies"), env: append(cvsEnviron(r.base), env(r.root, r.base)...), dir: r.work})
	wantCode(t, res, 125)
	contains(t, "treetx's stderr", res.stderr, "lost old content: m1/d1/CVS/fileattr")
}

// TestCVSSharedGroupRepository: the usual multi-user CVS setup (the CVS
// manual's): the repository belongs to whoever made each file (root here),
// its group is the developers' group, directories are group-writable and
// setgid. A developer (user nobody, in that group) runs a command that
// fails: a commit that goes through before the command fails, or a
// command that fails at once. A user other than root cannot give the
// shadow's directories their owner: treetx refuses before running the
// command (exit 125, one line, the repository untouched). With
// --allow-owner-change it runs, and the rollback finishes without root:
// the repository is as before but for the owner of its directories and
// of the CVS files treetx copies (CVSROOT/history, CVSROOT/val-tags),
// which are the developer's now.
func TestCVSSharedGroupRepository(t *testing.T) {
	t.Parallel()
	testenv.Require(t, testenv.CVS)
	testenv.Require(t, testenv.Root)
	const devGroup = 64998 // numeric: the kernel needs no /etc/group entry
	const line = `treetx run --allow-owner-change /srv/cvsroot -- cvs -d /srv/cvsroot commit -m "fix" m1 m2 m3`
	for _, tt := range []struct {
		name        string
		allow       bool
		failAtOnce  bool
		wantRefusal bool
	}{
		{"commit, then fail", false, false, true},
		{"commit, then fail, --allow-owner-change", true, false, false},
		{"fail at once, --allow-owner-change", true, true, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := newCVSRepo(t, cvsSmall)
			for d := r.base; d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
				if err := os.Chmod(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			sh(t, nil, fmt.Sprintf(`set -e
chgrp -R %d %q
chmod -R g+w %q
find %q -type d -exec chmod g+s {} +
chown -R %d:%d %q`, devGroup, r.parent, r.parent, r.parent, nobodyID, nobodyID, r.work))
			r.appendTo(t, "/* by a developer */\n", "m1/d1/f1.c", "m2/d2/f2.c", "m3/d3/d4/f3.c")
			dev := &syscall.Credential{Uid: nobodyID, Gid: nobodyID, Groups: []uint32{devGroup}}
			before := capture(t, r.root)
			beforeParent := listing(t, r.parent)

			c := r.doc(t, line, "")
			if !tt.allow {
				c.argv = slices.DeleteFunc(c.argv, func(a string) bool { return a == "--allow-owner-change" })
			}
			// The command fails: after the commit, or at once.
			tail := append(script(`"$@" && exit 1`), append([]string{"sh"}, c.after(t)...)...)
			if tt.failAtOnce {
				tail = []string{"false"}
			}
			c.argv = append(c.argv[:slices.Index(c.argv, "--")+1], tail...)
			res := r.runDoc(t, c, "", dev)
			if tt.wantRefusal {
				wantCode(t, res, 125)
				oneLine(t, res.stderr, "cannot keep the owner", "--allow-owner-change")
				treeimage.AssertEqual(t, "before", before, "after", capture(t, r.root))
				sameListing(t, r.parent, beforeParent, lockName("tree"))
				noLeftovers(t, r.parent, "tree")
				if headRev(t, r.path("m1/d1/f1.c,v")) != "1.2" {
					t.Errorf("the commit ran: m1/d1/f1.c,v is at %s", headRev(t, r.path("m1/d1/f1.c,v")))
				}
				return
			}
			wantCode(t, res, 1)
			contains(t, "treetx's stderr", res.stderr, "rolled back")
			// Owners aside (directories and copies are the developer's
			// now), the repository is as it was.
			after := capture(t, r.root)
			for i, e := range after {
				if e.Type == "dir" || e.Path == "CVSROOT/history" || e.Path == "CVSROOT/val-tags" {
					if e.UID != nobodyID {
						t.Errorf("%s: uid %d after the rollback, want the developer's", e.Path, e.UID)
					}
					after[i].UID = 0
				}
			}
			treeimage.AssertEqual(t, "before", before, "after the rollback (owners aside)", after)
			noLeftovers(t, r.parent, "tree")
			st := invoke(t, invocation{args: []string{"status", r.root}, cred: dev, dir: "/"})
			if st.code != 0 {
				t.Errorf("after the rollback, treetx status exits %d: %s", st.code, st.stdout)
			}
			r.check(t, cvsTemplateFor(t, cvsSmall).files)
		})
	}
}
