package txn_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/fsys/fsystest"
	"github.com/treetx/treetx/internal/testenv"
	"github.com/treetx/treetx/internal/treeimage"
	txrecover "github.com/treetx/treetx/recover"
	"github.com/treetx/treetx/txn"
)

// The crash tests run a transaction (or a recovery) in a child process,
// which kills itself with SIGKILL right after mutation number N, so that no
// deferred code runs. The parent then recovers and checks the invariant: the
// directory is exactly the old tree, or exactly the new one if the commit
// point (the journal saying "commit") was reached; nothing else is left.

const (
	envChild = "TREETX_TEST_CRASH_CHILD" // "txn" or "recover"
	envDir   = "TREETX_TEST_CRASH_DIR"
	envPath  = "TREETX_TEST_CRASH_PATH" // "commit" or "rollback"
	envAfter = "TREETX_TEST_CRASH_AFTER"
)

func TestMain(m *testing.M) {
	if os.Getenv(envChild) != "" {
		os.Exit(crashChild())
	}
	testenv.Announce(testenv.Root, testenv.Btrfs)
	os.Exit(m.Run())
}

// crashChild is the victim process.
func crashChild() int {
	after, _ := strconv.Atoi(os.Getenv(envAfter))
	f := &fsystest.FS{CrashAfter: after}
	dir := os.Getenv(envDir)
	if os.Getenv(envChild) == "group" {
		if err := transactGroup(strings.Split(dir, ":"), os.Getenv(envPath), f); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 3
		}
		return 0
	}
	if os.Getenv(envChild) == "recover" {
		if _, err := txrecover.Recover(dir, txrecover.Options{FS: f}); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 3
		}
		return 0
	}
	if err := transact(dir, os.Getenv(envPath), f); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	return 0
}

// transact runs one whole transaction on dir through fs.
func transact(dir, path string, fs *fsystest.FS) error {
	tx, err := txn.Begin(dir, txn.Options{FS: fs})
	if err != nil {
		return err
	}
	if path == "unchanged" {
		// A failed command that only read, and changed the mode of a
		// linked file: the rollback restores the mode in place and puts
		// no shadow back.
		if _, err := os.ReadFile(filepath.Join(dir, "CVSROOT/modules")); err != nil {
			return errors.Join(err, rollbackErr(tx.Rollback()))
		}
		if err := os.Chmod(filepath.Join(dir, "a/run.sh"), 0o700); err != nil {
			return errors.Join(err, rollbackErr(tx.Rollback()))
		}
		res, err := tx.Rollback()
		if err == nil && !res.Unchanged {
			err = errors.New("the rollback of an unchanged tree put the shadow back")
		}
		return err
	}
	if err := mutate(dir); err != nil {
		return errors.Join(err, rollbackErr(tx.Rollback()))
	}
	if path == "commit" {
		_, err = tx.Commit()
	} else {
		_, err = tx.Rollback()
	}
	return err
}

func rollbackErr(_ *txn.Result, err error) error { return err }

var fixedTime = time.Date(2020, 5, 6, 7, 8, 9, 123456789, time.UTC)

// mutate changes a sample tree the way a CVS-like program does: replace by
// rename, delete, create, chmod through the shared inode, append to a
// copied file, remove an empty directory, swap a symlink. Every file it
// writes gets a fixed mtime, so the new tree is the same in every run.
func mutate(dir string) error {
	p := func(rel string) string { return filepath.Join(dir, rel) }
	steps := []func() error{
		func() error { return os.WriteFile(p("mod/d1/,f1.c,"), []byte("new revision\n"), 0o444) },
		func() error { return os.Chtimes(p("mod/d1/,f1.c,"), fixedTime, fixedTime) },
		func() error { return os.Rename(p("mod/d1/,f1.c,"), p("mod/d1/f1.c,v")) },
		func() error { return os.Remove(p("a/b/notes.txt")) },
		func() error { return os.Mkdir(p("mod/d3"), 0o775) },
		func() error { return os.WriteFile(p("mod/d3/f3.c,v"), []byte("added\n"), 0o444) },
		func() error { return os.Chtimes(p("mod/d3/f3.c,v"), fixedTime, fixedTime) },
		func() error { return os.Chmod(p("a/run.sh"), 0o700) },
		func() error {
			f, err := os.OpenFile(p("CVSROOT/history"), os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				return err
			}
			_, err = f.WriteString("A67a1b2c4|sample|~/mod|mod/d3|1.1|f3.c\n")
			return errors.Join(err, f.Close())
		},
		func() error { return os.Chtimes(p("CVSROOT/history"), fixedTime, fixedTime) },
		func() error { return os.Remove(p("empty")) },
		func() error { return os.Remove(p("links/dangling")) },
		func() error { return os.Symlink("../mod", p("links/to-mod")) },
		func() error {
			ts := []unix.Timespec{unix.NsecToTimespec(fixedTime.UnixNano()), unix.NsecToTimespec(fixedTime.UnixNano())}
			return unix.UtimesNanoAt(unix.AT_FDCWD, p("links/to-mod"), ts, unix.AT_SYMLINK_NOFOLLOW)
		},
	}
	for i, s := range steps {
		if err := s(); err != nil {
			return fmt.Errorf("mutate step %d: %w", i, err)
		}
	}
	return nil
}

// images returns the old and new images of the sample tree.
func images(t *testing.T) (old, new treeimage.Image) {
	t.Helper()
	return imagesIn(t, t.TempDir())
}

// imagesIn is images, made in parent.
func imagesIn(t *testing.T, parent string) (old, new treeimage.Image) {
	t.Helper()
	dir := newSampleIn(t, parent)
	old = treeimage.MustCapture(t, dir, treeimage.Options{})
	if err := mutate(dir); err != nil {
		t.Fatal(err)
	}
	new = treeimage.MustCapture(t, dir, treeimage.Options{IgnoreDirMtime: true})
	return old, new
}

// newSample builds the sample tree as PARENT/repo in a new temporary parent.
func newSample(t testing.TB) string {
	t.Helper()
	return newSampleIn(t, t.TempDir())
}

// newSampleIn builds the sample tree as parent/repo.
func newSampleIn(t testing.TB, parent string) string {
	t.Helper()
	dir := filepath.Join(parent, "repo")
	if err := treeimage.BuildSample(dir); err != nil {
		t.Fatal(err)
	}
	return dir
}

// tmpfsDir is a new temporary directory on a tmpfs (/dev/shm) where there
// is one, else on the disk. A kill test can use it: what a killed process
// did stays in the page cache whatever the file system, and the syncs that
// a disk makes slow cost nothing there.
func tmpfsDir(t testing.TB) string {
	t.Helper()
	var st unix.Statfs_t
	if unix.Statfs("/dev/shm", &st) != nil || st.Type != unix.TMPFS_MAGIC || unix.Access("/dev/shm", unix.W_OK) != nil {
		return t.TempDir()
	}
	d, err := os.MkdirTemp("/dev/shm", "treetx-crash-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// runChild runs a victim and reports whether it crashed (true) or finished.
func runChild(t *testing.T, kind, dir, path string, after int) bool {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envChild+"="+kind, envDir+"="+dir, envPath+"="+path, envAfter+"="+strconv.Itoa(after))
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
			return true
		}
	}
	if err != nil {
		t.Fatalf("%s child (crash after step %d) failed: %v\n%s", kind, after, err, out)
	}
	return false
}

// dryRun records the steps of a whole transaction and returns them with the
// commit point: the step that makes the journal say "commit" (0 on the
// rollback path).
func dryRun(t *testing.T, path string) (ops []fsystest.Op, commitPoint int) {
	t.Helper()
	dir := newSample(t)
	fs := &fsystest.FS{Record: true}
	if err := transact(dir, path, fs); err != nil {
		t.Fatal(err)
	}
	ops = fs.Ops()
	journals := 0
	for _, op := range ops {
		if op.Kind == "renameat2" && strings.HasSuffix(op.Path2, ".#treetx.repo.journal") {
			journals++
			if journals == 3 && path == "commit" {
				commitPoint = op.Step
			}
		}
	}
	if path == "commit" && commitPoint == 0 {
		t.Fatalf("no commit point among %d steps", len(ops))
	}
	return ops, commitPoint
}

// checkInvariant recovers dir and checks it holds want, with nothing but
// the lock file left beside it. It returns a description of the violation.
func checkInvariant(t *testing.T, dir string, want treeimage.Image, opts treeimage.Options) string {
	t.Helper()
	if _, err := txrecover.Recover(dir, txrecover.Options{}); err != nil {
		return fmt.Sprintf("recover: %v", err)
	}
	got, err := treeimage.Capture(dir, opts)
	if err != nil {
		return fmt.Sprintf("capture: %v", err)
	}
	if d := want.Diff(got); d != nil {
		return fmt.Sprintf("tree differs: %s", strings.Join(d[:min(len(d), 5)], "; "))
	}
	names, err := os.ReadDir(filepath.Dir(dir))
	if err != nil {
		return err.Error()
	}
	var left []string
	for _, e := range names {
		if e.Name() != "repo" && e.Name() != ".#treetx.repo.lock" && e.Name() != ".#treetx.repo.gate" {
			left = append(left, e.Name())
		}
	}
	if len(left) > 0 {
		return fmt.Sprintf("left behind: %v", left)
	}
	return ""
}

// TestCrashAfterEveryStep kills a transaction after a step, recovers, and
// checks the invariant, for every step of the protocol but its syncs (a kill
// after a sync leaves the state of the step before it), the first and last
// step inside each tree built or deleted, and a seeded sample of the other
// steps; with TREETX_EXHAUSTIVE=1, after every single step.
func TestCrashAfterEveryStep(t *testing.T) {
	old, new := images(t)
	seed := testenv.Seed(t)
	var total, all, violations atomic.Int64
	t.Cleanup(func() {
		t.Logf("crash points: %s, %d violations", testenv.Counted(int(total.Load()), int(all.Load())), violations.Load())
		fmt.Printf("crash points: %s, %d violations\n", testenv.Counted(int(total.Load()), int(all.Load())), violations.Load())
	})
	for i, path := range []string{"commit", "rollback", "unchanged"} {
		t.Run(path, func(t *testing.T) {
			t.Parallel()
			ops, commitPoint := dryRun(t, path)
			rng := rand.New(rand.NewPCG(seed, uint64(i)))
			steps := testenv.Sample(len(ops), func(j int) bool { return keyStep(ops, j) }, 12, rng)
			all.Add(int64(len(ops)))
			check := func(n int, dir string) {
				total.Add(1)
				want, opts, label := old, treeimage.Options{}, "old"
				if commitPoint > 0 && n >= commitPoint {
					want, opts, label = new, treeimage.Options{IgnoreDirMtime: true}, "new"
				}
				if v := checkInvariant(t, dir, want, opts); v != "" {
					violations.Add(1)
					what := fmt.Sprint(n)
					if n <= len(ops) {
						what = ops[n-1].String()
					}
					t.Errorf("crash after step %s: want the %s tree: %s", what, label, v)
				}
			}
			for _, j := range steps {
				check(j+1, newSampleCrashed(t, t.TempDir(), path, j+1))
			}
			// Steps past those of the dry run, if any, are checked too.
			for n := len(ops) + 1; ; n++ {
				dir := newSample(t)
				if !runChild(t, "txn", dir, path, n) {
					break
				}
				all.Add(1)
				check(n, dir)
			}
		})
	}
}

// newSampleCrashed builds the sample tree in parent and runs a transaction
// of path on it that is killed right after step n; it fails the test if
// the transaction ends first.
func newSampleCrashed(t *testing.T, parent, path string, n int) string {
	t.Helper()
	dir := newSampleIn(t, parent)
	if !runChild(t, "txn", dir, path, n) {
		t.Fatalf("the victim finished before step %d", n)
	}
	return dir
}

// isSync tells an fsync or a syncfs: a kill right after one leaves the
// state a kill before it leaves.
func isSync(op fsystest.Op) bool { return op.Kind == "fsync" || op.Kind == "syncfs" }

// keyStep tells the steps of ops that a sampled run always crashes after:
// the protocol's own (outside the trees being built or deleted) but its
// syncs, and the first and last steps inside each of those trees.
func keyStep(ops []fsystest.Op, i int) bool {
	if !insideTree(ops[i]) {
		return !isSync(ops[i])
	}
	return i == 0 || !insideTree(ops[i-1]) || i == len(ops)-1 || !insideTree(ops[i+1])
}

// TestCrashDuringRecovery crashes a transaction after a step of the
// protocol proper, then crashes the recovery after one of its steps, then
// recovers again. Steps inside a tree being built or deleted are left out
// (every crash state there is alike: a partial tree under a name that is
// garbage), except in the crash-after-every-step test above.
//
// Crash states of the transaction whose recoveries take the same steps are
// alike to this test: it crashes the recovery after each of its steps but
// syncs for the first state of each kind, and after a seeded sample of the
// other pairs of a transaction step and a recovery step. With
// TREETX_EXHAUSTIVE=1, every pair, syncs included. The trees are on a
// tmpfs where there is one (see tmpfsDir).
func TestCrashDuringRecovery(t *testing.T) {
	old, new := imagesIn(t, tmpfsDir(t))
	seed := testenv.Seed(t)
	var total, all, kinds, violations atomic.Int64
	t.Cleanup(func() {
		fmt.Printf("recovery crash points: %s (%d kinds of recovery), %d violations\n",
			testenv.Counted(int(total.Load()), int(all.Load())), kinds.Load(), violations.Load())
	})
	for i, path := range []string{"commit", "rollback", "unchanged"} {
		t.Run(path, func(t *testing.T) {
			t.Parallel()
			ops, commitPoint := dryRun(t, path)
			type pair struct{ step, rstep int }
			var pairs []pair
			var must []bool
			seen := map[string]bool{}
			for _, op := range ops {
				if insideTree(op) || !testenv.Exhaustive() && isSync(op) {
					continue
				}
				// Record what this recovery does, to crash it after each step.
				dir := newSampleCrashed(t, tmpfsDir(t), path, op.Step)
				rfs := &fsystest.FS{Record: true}
				if _, err := txrecover.Recover(dir, txrecover.Options{FS: rfs}); err != nil {
					t.Fatalf("crash after step %s: recover: %v", op, err)
				}
				var rsteps []int
				var kind strings.Builder
				for _, rop := range rfs.Ops() {
					if insideTree(rop) || !testenv.Exhaustive() && isSync(rop) {
						continue
					}
					rsteps = append(rsteps, rop.Step)
					fmt.Fprintf(&kind, "%s %s %s;", rop.Kind, idRE.ReplaceAllString(filepath.Base(rop.Path), ".ID"), idRE.ReplaceAllString(filepath.Base(rop.Path2), ".ID"))
				}
				first := !seen[kind.String()]
				seen[kind.String()] = true
				for _, r := range rsteps {
					pairs = append(pairs, pair{op.Step, r})
					must = append(must, first)
				}
			}
			kinds.Add(int64(len(seen)))
			all.Add(int64(len(pairs)))
			rng := rand.New(rand.NewPCG(seed, uint64(i)))
			for _, k := range testenv.Sample(len(pairs), func(j int) bool { return must[j] }, 8, rng) {
				p := pairs[k]
				op := ops[p.step-1]
				want, opts := old, treeimage.Options{}
				if commitPoint > 0 && op.Step >= commitPoint {
					want, opts = new, treeimage.Options{IgnoreDirMtime: true}
				}
				dir := newSampleCrashed(t, tmpfsDir(t), path, op.Step)
				if !runChild(t, "recover", dir, path, p.rstep) {
					t.Fatalf("crash after step %s: the recovery finished before its step %d", op, p.rstep)
				}
				total.Add(1)
				if v := checkInvariant(t, dir, want, opts); v != "" {
					violations.Add(1)
					t.Errorf("crash after step %s, then recovery crash after its step %d: %s", op, p.rstep, v)
				}
			}
		})
	}
}

// idRE matches the random id at the end of a name.
var idRE = regexp.MustCompile(`\.[0-9a-f]{16}$`)

// insideTree tells an op on an entry inside a shadow being built or a tree
// being deleted.
func insideTree(op fsystest.Op) bool {
	return insideRE.MatchString(op.Path) || insideRE.MatchString(op.Path2)
}

var insideRE = regexp.MustCompile(`\.#treetx\.repo\.(incomplete|removing\.[0-9a-f]{16})/`)

// TestDryRunStepsAreDeterministic checks what the crash tests rely on: two
// runs take the same steps, in the same order outside the trees being built
// or deleted (whose directories are processed in parallel, in any order),
// and the same number of each kind inside them.
func TestDryRunStepsAreDeterministic(t *testing.T) {
	a, _ := dryRun(t, "rollback")
	b, _ := dryRun(t, "rollback")
	split := func(ops []fsystest.Op) (outside, inside []string) {
		for _, o := range ops {
			if insideTree(o) {
				inside = append(inside, o.Kind)
			} else {
				outside = append(outside, fmt.Sprintf("%d %s", o.Step, o.Kind))
			}
		}
		slices.Sort(inside)
		return outside, inside
	}
	ao, ai := split(a)
	bo, bi := split(b)
	if !slices.Equal(ao, bo) || !slices.Equal(ai, bi) {
		t.Fatalf("two runs took different steps:\n%v\n%v\n%v\n%v", ao, bo, ai, bi)
	}
}
