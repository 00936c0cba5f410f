package txn_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/treetx/treetx/internal/fsys/fsystest"
	"github.com/treetx/treetx/internal/testenv"
	"github.com/treetx/treetx/internal/treeimage"
	txrecover "github.com/treetx/treetx/recover"
	"github.com/treetx/treetx/txn"
)

// The group crash tests run one transaction over several sample trees, each
// PARENTi/repo, in a child process killed right after mutation N (envChild
// "group", the trees in envDir separated by ":"), then recover one of the
// trees, chosen in turn, and check that every tree is the old one, or every
// tree the new one if the group's commit point (the record's journal saying
// commit) was reached, with nothing but the lock files left beside them.

// transactGroup runs one transaction over dirs through fs.
func transactGroup(dirs []string, path string, fs *fsystest.FS) error {
	g, err := txn.BeginGroup(context.Background(), dirs, txn.Options{FS: fs})
	if err != nil {
		return err
	}
	for _, d := range dirs {
		if err := mutate(d); err != nil {
			_, rbErr := g.Rollback()
			return errors.Join(err, rbErr)
		}
	}
	if path == "commit" {
		_, err = g.Commit()
	} else {
		_, err = g.Rollback()
	}
	return err
}

// newGroupSample builds k sample trees, each PARENT/repo in a parent of its
// own under root, and returns them sorted (the record's first).
func newGroupSample(t testing.TB, root string, k int) []string {
	t.Helper()
	var dirs []string
	for i := range k {
		parent := filepath.Join(root, "p"+strconv.Itoa(i))
		if err := os.Mkdir(parent, 0o755); err != nil {
			t.Fatal(err)
		}
		dirs = append(dirs, newSampleIn(t, parent))
	}
	slices.Sort(dirs)
	return dirs
}

// runGroupChild runs a group victim and reports whether it crashed.
func runGroupChild(t *testing.T, dirs []string, path string, after int) bool {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envChild+"=group", envDir+"="+strings.Join(dirs, ":"), envPath+"="+path, envAfter+"="+strconv.Itoa(after))
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
			return true
		}
	}
	if err != nil {
		t.Fatalf("group child (crash after step %d) failed: %v\n%s", after, err, out)
	}
	return false
}

// groupDryRun records the steps of a whole group transaction over k trees
// and returns them with the commit point: the rename that makes the
// record's journal say commit (its third), 0 on the rollback path.
func groupDryRun(t *testing.T, k int, path string) (ops []fsystest.Op, commitPoint int) {
	t.Helper()
	dirs := newGroupSample(t, t.TempDir(), k)
	fs := &fsystest.FS{Record: true}
	if err := transactGroup(dirs, path, fs); err != nil {
		t.Fatal(err)
	}
	ops = fs.Ops()
	record := filepath.Join(filepath.Dir(dirs[0]), ".#treetx.repo.journal")
	journals := 0
	for _, op := range ops {
		if op.Kind == "renameat2" && op.Path2 == record {
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

// checkGroup recovers dirs[which] and checks that every tree of dirs holds
// want; then recovers every tree and checks it again, with nothing but the
// lock files left beside them.
func checkGroup(t *testing.T, dirs []string, which int, want treeimage.Image, opts treeimage.Options) string {
	t.Helper()
	if _, err := txrecover.Recover(dirs[which], txrecover.Options{}); err != nil {
		return fmt.Sprintf("recover %s: %v", dirs[which], err)
	}
	same := func() string {
		for _, dir := range dirs {
			got, err := treeimage.Capture(dir, opts)
			if err != nil {
				return fmt.Sprintf("capture: %v", err)
			}
			if d := want.Diff(got); d != nil {
				return fmt.Sprintf("%s differs: %s", dir, strings.Join(d[:min(len(d), 5)], "; "))
			}
		}
		return ""
	}
	if v := same(); v != "" {
		return v
	}
	// A tree whose Begin had not written its journal yet knows nothing of
	// the group: what it left there (a shadow begun, never installed) is
	// that tree's own recovery's to drop.
	for _, dir := range dirs {
		if _, err := txrecover.Recover(dir, txrecover.Options{}); err != nil {
			return fmt.Sprintf("recover %s after %s: %v", dir, dirs[which], err)
		}
	}
	if v := same(); v != "" {
		return "after recovering every tree: " + v
	}
	for _, dir := range dirs {
		names, err := os.ReadDir(filepath.Dir(dir))
		if err != nil {
			return err.Error()
		}
		for _, e := range names {
			if e.Name() != "repo" && e.Name() != ".#treetx.repo.lock" && e.Name() != ".#treetx.repo.gate" {
				return fmt.Sprintf("left behind beside %s: %s", dir, e.Name())
			}
		}
	}
	return ""
}

// TestGroupCrashAfterEveryStep kills a transaction over 2 and over 3 trees
// after a step, recovers one of the trees (each in turn), and checks that
// all the trees are old, or all new once the record said commit. Every step
// of the protocol proper but its syncs, the first and last inside each tree
// built or deleted, and a seeded sample of the others; with
// TREETX_EXHAUSTIVE=1, every single step.
func TestGroupCrashAfterEveryStep(t *testing.T) {
	old, new := images(t)
	seed := testenv.Seed(t)
	var total, all, violations atomic.Int64
	t.Cleanup(func() {
		fmt.Printf("group crash points: %s, %d violations\n", testenv.Counted(int(total.Load()), int(all.Load())), violations.Load())
	})
	i := 0
	for _, k := range []int{2, 3} {
		for _, path := range []string{"commit", "rollback"} {
			i++
			t.Run(fmt.Sprintf("%d trees %s", k, path), func(t *testing.T) {
				t.Parallel()
				ops, commitPoint := groupDryRun(t, k, path)
				rng := rand.New(rand.NewPCG(seed, uint64(100+i)))
				extra := 12
				if k == 3 {
					extra = 6
				}
				steps := testenv.Sample(len(ops), func(j int) bool { return keyStep(ops, j) && (k == 2 || j%2 == 0) }, extra, rng)
				all.Add(int64(len(ops)))
				for _, j := range steps {
					n := j + 1
					dirs := newGroupSample(t, tmpfsDir(t), k)
					if !runGroupChild(t, dirs, path, n) {
						t.Fatalf("the transaction ended before step %d of %d", n, len(ops))
					}
					total.Add(1)
					want, opts, label := old, treeimage.Options{}, "old"
					if commitPoint > 0 && n >= commitPoint {
						want, opts, label = new, treeimage.Options{IgnoreDirMtime: true}, "new"
					}
					if v := checkGroup(t, dirs, n%k, want, opts); v != "" {
						violations.Add(1)
						t.Errorf("crash after step %s, recovering tree %d: want every tree %s: %s", ops[j], n%k, label, v)
					}
				}
			})
		}
	}
}

// TestGroupCrashDuringRecovery crashes a transaction over 2 trees after a
// step of the protocol proper, then crashes the recovery of one tree after
// each of its steps, then recovers the other tree, and checks that every
// tree is old, or every tree new once the record said commit. A seeded
// sample of the transaction's steps (all with TREETX_EXHAUSTIVE=1).
func TestGroupCrashDuringRecovery(t *testing.T) {
	old, new := images(t)
	seed := testenv.Seed(t)
	var total, violations atomic.Int64
	t.Cleanup(func() {
		fmt.Printf("group recovery crash points: %d checked, %d violations\n", total.Load(), violations.Load())
	})
	for i, path := range []string{"commit", "rollback"} {
		t.Run(path, func(t *testing.T) {
			t.Parallel()
			ops, commitPoint := groupDryRun(t, 2, path)
			rng := rand.New(rand.NewPCG(seed, uint64(200+i)))
			var proper []int
			for j, op := range ops {
				if !insideTree(op) && !isSync(op) {
					proper = append(proper, j)
				}
			}
			picked := testenv.Sample(len(proper), nil, 4, rng)
			for _, pi := range picked {
				n := proper[pi] + 1
				want, opts, label := old, treeimage.Options{}, "old"
				if commitPoint > 0 && n >= commitPoint {
					want, opts, label = new, treeimage.Options{IgnoreDirMtime: true}, "new"
				}
				for m := 1; ; m++ {
					dirs := newGroupSample(t, tmpfsDir(t), 2)
					if !runGroupChild(t, dirs, path, n) {
						t.Fatalf("the transaction ended before step %d", n)
					}
					first := (n + m) % 2
					crashed := runChild(t, "recover", dirs[first], "", m)
					total.Add(1)
					if v := checkGroup(t, dirs, 1-first, want, opts); v != "" {
						violations.Add(1)
						t.Errorf("crash after step %s, recovery of tree %d crashed after its step %d, then tree %d recovered: want every tree %s: %s", ops[n-1], first, m, 1-first, label, v)
					}
					if !crashed {
						break
					}
				}
			}
		})
	}
}
