package txn_test

import (
	"errors"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/fsys/fsystest"
	"github.com/treetx/treetx/internal/treeimage"
	txrecover "github.com/treetx/treetx/recover"
)

// TestErrorsAtEveryStep fails each step of a whole transaction (commit and
// rollback paths) with each errno a real file system returns there. The
// error must reach the caller, name its cause, and leave a state that
// recovery turns into the old tree (or the new one, past the commit point)
// with nothing of treetx's left.
func TestErrorsAtEveryStep(t *testing.T) {
	old, new := images(t)
	errnos := []syscall.Errno{unix.ENOSPC, unix.EIO, unix.EMLINK, unix.EACCES, unix.EXDEV}
	checked := 0
	for _, path := range []string{"commit", "rollback"} {
		t.Run(path, func(t *testing.T) {
			ops, commitPoint := dryRun(t, path)
			for step := 1; step <= len(ops); step++ {
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
				checked++
			}
		})
	}
	t.Logf("error injection: %d steps failed", checked)
}
