package txn_test

import (
	"errors"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/fsys/fsystest"
	"github.com/treetx/treetx/internal/testenv"
	"github.com/treetx/treetx/internal/treeimage"
	txrecover "github.com/treetx/treetx/recover"
)

// TestErrorsAtEveryStep fails each step of a whole transaction (commit and
// rollback paths) with each errno a real file system returns there. The
// error must reach the caller, name its cause, and leave a state that
// recovery turns into the old tree (or the new one, past the commit point)
// with nothing of treetx's left.
//
// A default run fails the steps crash tests always crash after (keyStep)
// and a seeded sample of the others; TREETX_EXHAUSTIVE=1 fails every step.
func TestErrorsAtEveryStep(t *testing.T) {
	old, new := images(t)
	errnos := []syscall.Errno{unix.ENOSPC, unix.EIO, unix.EMLINK, unix.EACCES, unix.EXDEV}
	seed := testenv.Seed(t)
	var checked, all atomic.Int64
	t.Cleanup(func() { t.Logf("error injection: %s", testenv.Counted(int(checked.Load()), int(all.Load()))) })
	for i, path := range []string{"commit", "rollback"} {
		t.Run(path, func(t *testing.T) {
			t.Parallel()
			ops, commitPoint := dryRun(t, path)
			all.Add(int64(len(ops)))
			rng := rand.New(rand.NewPCG(seed, uint64(i)))
			for _, j := range testenv.Sample(len(ops), func(j int) bool { return keyStep(ops, j) }, 12, rng) {
				step := j + 1
				if testing.Short() && step%7 != 0 {
					continue
				}
				errno := errnos[step%len(errnos)]
				dir := newSample(t)
				err := transact(dir, path, &fsystest.FS{FailAt: step, FailErr: errno})
				op := ops[step-1]
				switch {
				case err == nil && op.Kind == "renameat2" && strings.Contains(op.Path2, ".removing."):
					// The two steps with a fallback: a shadow that cannot be
					// renamed for removal is deleted in place, a manifest
					// that cannot be moved into the removal tree unlinked.
				case err == nil:
					t.Errorf("%s failing with %v: the transaction succeeded", op, errno)
					continue
				case !errors.Is(err, errno) || !strings.Contains(err.Error(), "/"):
					t.Errorf("%s failing with %v: error %q does not carry the errno and a path", op, errno, err)
				}
				if _, err := txrecover.Recover(dir, txrecover.Options{}); err != nil {
					t.Errorf("%s failing with %v: recover: %v", op, errno, err)
					continue
				}
				want, opts := old, treeimage.Options{}
				if commitPoint > 0 && step > commitPoint {
					want, opts = new, treeimage.Options{IgnoreDirMtime: true}
				}
				if d := want.Diff(treeimage.MustCapture(t, dir, opts)); d != nil {
					t.Errorf("%s failing with %v, then recover: %v", op, errno, d[:min(len(d), 4)])
				}
				if left := leftovers(t, dir); left != nil {
					t.Errorf("%s failing with %v, then recover: left behind %v", op, errno, left)
				}
				checked.Add(1)
			}
		})
	}
}
