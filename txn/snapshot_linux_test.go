package txn_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/btrfs"
	"github.com/treetx/treetx/internal/fsys/fsystest"
	"github.com/treetx/treetx/internal/layout"
	"github.com/treetx/treetx/internal/testenv"
	"github.com/treetx/treetx/internal/treeimage"
	txrecover "github.com/treetx/treetx/recover"
	"github.com/treetx/treetx/txn"
)

// The tests of snapshot mode run on a loop-mounted btrfs image (as root;
// under CI=true a missing mkfs.btrfs or loop device fails them). The
// sample tree is the root of a subvolume there, so that txn.Begin, in its
// default mode, takes a snapshot; the crash children of crash_test.go run
// on it unchanged.

// btrfsImage is a btrfs image for one test, with room for its trees.
func btrfsImage(t *testing.T) *testenv.Image {
	t.Helper()
	return testenv.FSImage(t, "btrfs", testenv.ImageOptions{MiB: 256})
}

// scratchOn returns a new empty directory on img.
func scratchOn(t testing.TB, img *testenv.Image) string {
	t.Helper()
	d, err := os.MkdirTemp(img.Dir, "t")
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// newSubvolSample builds the sample tree as the subvolume PARENT/repo in a
// new directory of img.
func newSubvolSample(t testing.TB, img *testenv.Image) string {
	t.Helper()
	dir := filepath.Join(scratchOn(t, img), "repo")
	if err := treeimage.BuildSampleSubvolume(dir); err != nil {
		t.Fatal(err)
	}
	return dir
}

// subvolImages returns the old and new images of the sample tree as a
// subvolume.
func subvolImages(t *testing.T, img *testenv.Image) (old, new treeimage.Image) {
	t.Helper()
	dir := newSubvolSample(t, img)
	old = treeimage.MustCapture(t, dir, treeimage.Options{})
	if err := mutate(dir); err != nil {
		t.Fatal(err)
	}
	return old, treeimage.MustCapture(t, dir, treeimage.Options{IgnoreDirMtime: true})
}

// subvolID is the id of the subvolume whose root is dir.
func subvolID(t testing.TB, dir string) uint64 {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	info, err := btrfs.SubvolumeInfo(fd)
	if err != nil {
		t.Fatal(err)
	}
	return info.ID
}

// TestSnapshotMode: on the root of a subvolume, Begin takes a snapshot
// (the journal says so and names both subvolumes); a commit keeps the
// changes and the subvolume, a rollback puts the snapshot in its place;
// nothing is left beside it. The modes a directory does not allow, nested
// subvolumes and --exclude are refused, with nothing changed.
func TestSnapshotMode(t *testing.T) {
	testenv.Require(t, testenv.Btrfs)
	img := btrfsImage(t)
	old, new := subvolImages(t, img)
	for _, tt := range []struct {
		name   string
		commit bool
		mode   txn.Mode
		subvol bool // the command makes a subvolume in the tree
	}{
		{"commit", true, "", false},
		{"rollback", false, txn.ModeAuto, false},
		{"rollback, --mode snapshot", false, txn.ModeSnapshot, false},
		{"rollback of a command that made a subvolume", false, txn.ModeAuto, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := newSubvolSample(t, img)
			id := subvolID(t, dir)
			tx, err := txn.Begin(dir, txn.Options{Mode: tt.mode})
			if err != nil {
				t.Fatal(err)
			}
			n, _ := layout.NamesFor(dir)
			j, err := layout.ReadJournal(n.Path(n.Journal))
			switch {
			case err != nil:
				t.Fatal(err)
			case !j.IsSnapshot() || j.Subvols == nil || j.Subvols.Dir.ID != id || j.Shadow.Ino != btrfs.FirstFreeObjectID:
				t.Errorf("journal: mode %q, subvols %+v, shadow %+v; want a snapshot of subvolume %d", j.Mode, j.Subvols, j.Shadow, id)
			case subvolID(t, n.Path(n.Complete)) != j.Subvols.Shadow.ID:
				t.Errorf("the journal names subvolume %d as the shadow, %s is %d", j.Subvols.Shadow.ID, n.Complete, subvolID(t, n.Path(n.Complete)))
			}
			if _, err := os.Lstat(n.Path(n.Meta)); err == nil {
				t.Errorf("a manifest in snapshot mode")
			}
			if err := mutate(dir); err != nil {
				t.Fatal(err)
			}
			if tt.subvol {
				// The failed tree then holds it: its deletion must not stop
				// there (the subvolume deletion refuses it: ENOTEMPTY).
				if err := treeimage.BuildSampleSubvolume(filepath.Join(dir, "mod", "made")); err != nil {
					t.Fatal(err)
				}
			}
			want, opts := old, treeimage.Options{}
			var res *txn.Result
			if tt.commit {
				res, err = tx.Commit()
				want, opts = new, treeimage.Options{IgnoreDirMtime: true}
			} else {
				res, err = tx.Rollback()
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Lost)+len(res.InPlace)+len(res.LeftOut) > 0 || res.Unchanged {
				t.Errorf("result %+v: want nothing lost, in place, left out", res)
			}
			treeimage.AssertEqual(t, "want", want, "got", treeimage.MustCapture(t, dir, opts))
			if got := subvolID(t, dir); tt.commit != (got == id) {
				t.Errorf("the directory is subvolume %d, was %d (commit %v)", got, id, tt.commit)
			}
			if l := leftovers(t, dir); len(l) > 0 {
				t.Errorf("left beside it: %v", l)
			}
		})
	}

	plain := filepath.Join(scratchOn(t, img), "repo")
	if err := treeimage.BuildSample(plain); err != nil {
		t.Fatal(err)
	}
	withNested := newSubvolSample(t, img)
	if err := treeimage.BuildSampleSubvolume(filepath.Join(withNested, "a", "nested")); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name, dir string
		opts      txn.Options
		want      string
	}{
		{"--mode snapshot on a directory", plain, txn.Options{Mode: txn.ModeSnapshot}, "needs the root of a btrfs subvolume"},
		{"--mode hardlink on a subvolume", newSubvolSample(t, img), txn.Options{Mode: txn.ModeHardlink}, "hard links from its parent cannot reach"},
		{"nested subvolumes", withNested, txn.Options{}, "1 nested subvolume(s)"},
		{"--exclude", newSubvolSample(t, img), txn.Options{Exclude: []string{"*.txt"}}, "--exclude"},
		{"bad mode", newSubvolSample(t, img), txn.Options{Mode: "copy"}, `mode "copy"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := treeimage.MustCapture(t, filepath.Dir(tt.dir), treeimage.Options{})
			tx, err := txn.Begin(tt.dir, tt.opts)
			if err == nil {
				tx.Rollback()
				t.Fatalf("Begin: no error, want %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Begin: %v, want %q", err, tt.want)
			}
			after := treeimage.MustCapture(t, filepath.Dir(tt.dir), treeimage.Options{})
			var changed []string
			for _, d := range before.Diff(after) {
				// The lock file (and the parent's mtime, which its
				// creation sets) is made before anything is refused.
				if !strings.Contains(d, ".#treetx.repo.lock") && !strings.Contains(d, ".#treetx.repo.gate") && !strings.HasPrefix(d, ".: mtime") {
					changed = append(changed, d)
				}
			}
			if len(changed) > 0 {
				t.Errorf("refused, but changed: %v", changed)
			}
		})
	}
}

// snapDryRun records the steps of a whole transaction of path (commit or
// rollback) in snapshot mode, and returns them with the commit point (see
// dryRun) and the last step of Begin.
func snapDryRun(t *testing.T, img *testenv.Image, path string) (ops []fsystest.Op, commitPoint, begun int) {
	t.Helper()
	fs := &fsystest.FS{Record: true}
	if err := transact(newSubvolSample(t, img), path, fs); err != nil {
		t.Fatal(err)
	}
	ops = fs.Ops()
	journals := 0
	for i, op := range ops {
		if op.Kind == "renameat2" && strings.HasSuffix(op.Path2, ".#treetx.repo.journal") {
			journals++
			if journals == 2 {
				begun = ops[i+1].Step // its fsync of the parent
			}
			if journals == 3 && path == "commit" {
				commitPoint = op.Step
			}
		}
	}
	if begun == 0 || path == "commit" && commitPoint == 0 || ops[0].Kind == "mkdirat" {
		t.Fatalf("%s: not a snapshot-mode run: %v", path, ops)
	}
	return ops, commitPoint, begun
}

// TestSnapshotCrashAfterEveryStep kills a transaction in snapshot mode
// after each of its steps (every one: there are no trees built or deleted
// file by file), recovers and checks the invariant; then, for each distinct
// recovery those crashes need, kills the recovery after each of its steps
// (but syncs; all with TREETX_EXHAUSTIVE=1) and recovers again.
func TestSnapshotCrashAfterEveryStep(t *testing.T) {
	testenv.Require(t, testenv.Btrfs)
	img := btrfsImage(t)
	old, new := subvolImages(t, img)
	var total, rtotal, kinds, violations atomic.Int64
	t.Cleanup(func() {
		t.Logf("snapshot mode: crash points: %d, recovery crash points: %d (%d kinds of recovery), %d violations", total.Load(), rtotal.Load(), kinds.Load(), violations.Load())
	})
	for _, path := range []string{"commit", "rollback"} {
		t.Run(path, func(t *testing.T) {
			ops, commitPoint, _ := snapDryRun(t, img, path)
			want := func(n int) (treeimage.Image, treeimage.Options, string) {
				if commitPoint > 0 && n >= commitPoint {
					return new, treeimage.Options{IgnoreDirMtime: true}, "new"
				}
				return old, treeimage.Options{}, "old"
			}
			seen := map[string]bool{}
			for n := 1; ; n++ {
				dir := newSubvolSample(t, img)
				if !runChild(t, "txn", dir, path, n) {
					if n <= len(ops) {
						t.Fatalf("the victim finished before step %d", n)
					}
					break
				}
				what := fmt.Sprint(n)
				if n <= len(ops) {
					what = ops[n-1].String()
				}
				w, opts, label := want(n)
				// Recover it, recording the recovery, to kill it after each
				// of its steps the first time such a recovery is met.
				rfs := &fsystest.FS{Record: true}
				if _, err := txrecover.Recover(dir, txrecover.Options{FS: rfs}); err != nil {
					t.Errorf("crash after step %s: recover: %v", what, err)
				}
				var kind strings.Builder
				var rsteps []int
				for _, rop := range rfs.Ops() {
					if !testenv.Exhaustive() && isSync(rop) {
						continue
					}
					rsteps = append(rsteps, rop.Step)
					fmt.Fprintf(&kind, "%s %s %s;", rop.Kind, idRE.ReplaceAllString(filepath.Base(rop.Path), ".ID"), idRE.ReplaceAllString(filepath.Base(rop.Path2), ".ID"))
				}
				total.Add(1)
				if v := checkInvariant(t, dir, w, opts); v != "" {
					violations.Add(1)
					t.Errorf("crash after step %s: want the %s tree: %s", what, label, v)
				}
				if seen[kind.String()] && !testenv.Exhaustive() {
					continue
				}
				seen[kind.String()] = true
				kinds.Add(1)
				for _, r := range rsteps {
					dir := newSubvolSample(t, img)
					if !runChild(t, "txn", dir, path, n) {
						t.Fatalf("the victim finished before step %d", n)
					}
					if !runChild(t, "recover", dir, path, r) {
						t.Fatalf("crash after step %s: the recovery finished before its step %d", what, r)
					}
					rtotal.Add(1)
					if v := checkInvariant(t, dir, w, opts); v != "" {
						violations.Add(1)
						t.Errorf("crash after step %s, then recovery crash after its step %d: %s", what, r, v)
					}
				}
			}
		})
	}
}

// TestRecoveryAfterRemount: a crash, then the file system is unmounted and
// mounted again, its subvolumes read in another order than before, so that
// btrfs gives them other device numbers (docs/btrfs.md); recovery must
// still find its shadow and roll back, in hard-link mode (a directory in a
// subvolume) and in snapshot mode (a subvolume).
func TestRecoveryAfterRemount(t *testing.T) {
	testenv.Require(t, testenv.Btrfs)
	img := btrfsImage(t)
	for _, tt := range []struct {
		name string
		mode txn.Mode
	}{
		{"hardlink", txn.ModeHardlink},
		{"snapshot", txn.ModeSnapshot},
	} {
		t.Run(tt.name, func(t *testing.T) {
			// Two subvolumes, "other" made first: after the remount, the
			// tree's and the shadow's are read first, and take lower
			// numbers than they had.
			parent := scratchOn(t, img)
			pfd, err := unix.Open(parent, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			for _, name := range []string{"other", "sv"} {
				if err := btrfs.CreateSubvolume(pfd, name); err != nil {
					t.Fatal(err)
				}
			}
			unix.Close(pfd)
			var st unix.Stat_t
			unix.Stat(filepath.Join(parent, "other"), &st)
			dir := filepath.Join(parent, "sv", "repo")
			build := treeimage.BuildSample
			if tt.mode == txn.ModeSnapshot {
				build = treeimage.BuildSampleSubvolume
			}
			if err := build(dir); err != nil {
				t.Fatal(err)
			}
			old := treeimage.MustCapture(t, dir, treeimage.Options{})
			// Crash after the first step of the commit (C1): the command
			// ran (mutate), the journal says running.
			victim := crashStepAfterBegin(t, img, build, dir)
			if !runChild(t, "txn", dir, "commit", victim) {
				t.Fatalf("the victim finished before step %d", victim)
			}
			n, _ := layout.NamesFor(dir)
			j, err := layout.ReadJournal(n.Path(n.Journal))
			if err != nil || j.Phase != layout.PhaseRunning {
				t.Fatalf("after the crash: journal %+v, %v; want phase running", j, err)
			}
			img.Remount(t)
			for _, p := range []string{n.Path(n.Complete), dir, filepath.Join(parent, "sv"), filepath.Join(parent, "other")} {
				unix.Lstat(p, &st)
			}
			if err := unix.Lstat(n.Path(n.Complete), &st); err != nil {
				t.Fatal(err)
			}
			if st.Dev == j.Shadow.Dev {
				t.Fatalf("the shadow kept device %d across the remount: the test shows nothing", st.Dev)
			}
			t.Logf("the shadow's device: %d in the journal, %d after the remount", j.Shadow.Dev, st.Dev)
			r, err := txrecover.Recover(dir, txrecover.Options{})
			if err != nil {
				t.Fatalf("recover after remount: %v (%s)", err, r.Found)
			}
			if v := checkInvariant(t, dir, old, treeimage.Options{}); v != "" {
				t.Error(v)
			}
		})
	}
}

// crashStepAfterBegin is the step, in a transaction on a tree build makes
// like dir, right after the journal says running and the command ran: the
// commit's first (C1).
func crashStepAfterBegin(t *testing.T, img *testenv.Image, build func(string) error, dir string) int {
	t.Helper()
	d := filepath.Join(scratchOn(t, img), filepath.Base(filepath.Dir(dir)))
	if err := os.Mkdir(d, 0o755); err != nil {
		t.Fatal(err)
	}
	twin := filepath.Join(d, "repo")
	if err := build(twin); err != nil {
		t.Fatal(err)
	}
	fs := &fsystest.FS{Record: true}
	if err := transact(twin, "commit", fs); err != nil {
		t.Fatal(err)
	}
	ops := fs.Ops()
	journals := 0
	for i, op := range ops {
		if op.Kind == "renameat2" && strings.HasSuffix(op.Path2, ".#treetx.repo.journal") {
			if journals++; journals == 2 {
				return ops[i+2].Step
			}
		}
	}
	t.Fatalf("no running journal among %v", ops)
	return 0
}

// TestSnapshotErrorsAtEveryStep fails each step of a transaction in
// snapshot mode (commit and rollback paths) with an errno a file system
// returns there (ENOSPC for the snapshot and the subvolume deletion, a full
// btrfs's): the error must carry it and a path, and recovery must then
// reach the old tree (the new one past the commit point) with nothing
// left. A subvolume deletion that fails is not an error: the tree is
// deleted entry by entry instead.
func TestSnapshotErrorsAtEveryStep(t *testing.T) {
	testenv.Require(t, testenv.Btrfs)
	img := btrfsImage(t)
	old, new := subvolImages(t, img)
	errnos := []syscall.Errno{unix.ENOSPC, unix.EIO, unix.EACCES, unix.EXDEV}
	checked := 0
	for _, path := range []string{"commit", "rollback"} {
		ops, commitPoint, _ := snapDryRun(t, img, path)
		for _, op := range ops {
			errno := errnos[op.Step%len(errnos)]
			if op.Kind == "snapshot" || op.Kind == "deletesubvolume" {
				errno = unix.ENOSPC
			}
			dir := newSubvolSample(t, img)
			err := transact(dir, path, &fsystest.FS{FailAt: op.Step, FailErr: errno})
			switch {
			case err == nil && (op.Kind == "deletesubvolume" || op.Kind == "renameat2" && strings.Contains(op.Path2, ".removing.")):
				// The fallbacks: entry by entry; in place.
			case err == nil:
				t.Errorf("%s: %s failing with %v: the transaction succeeded", path, op, errno)
				continue
			case !errors.Is(err, errno) || !strings.Contains(err.Error(), "/"):
				t.Errorf("%s: %s failing with %v: error %q does not carry the errno and a path", path, op, errno, err)
			}
			if _, err := txrecover.Recover(dir, txrecover.Options{}); err != nil {
				t.Errorf("%s: %s failing with %v: recover: %v", path, op, errno, err)
				continue
			}
			want, opts := old, treeimage.Options{}
			if commitPoint > 0 && op.Step > commitPoint {
				want, opts = new, treeimage.Options{IgnoreDirMtime: true}
			}
			if d := want.Diff(treeimage.MustCapture(t, dir, opts)); d != nil {
				t.Errorf("%s: %s failing with %v, then recover: %v", path, op, errno, d[:min(len(d), 4)])
			}
			if left := leftovers(t, dir); left != nil {
				t.Errorf("%s: %s failing with %v, then recover: left behind %v", path, op, errno, left)
			}
			checked++
		}
	}
	t.Logf("snapshot mode: %d failed steps checked", checked)
}
