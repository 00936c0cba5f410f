package recover

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/fsys"
	"github.com/treetx/treetx/internal/layout"
	"github.com/treetx/treetx/internal/protocol"
)

// apply carries out r.Plan on the directory n, under the lock the caller
// holds, and records in r what was done. The steps that drop what no
// journal claims (G1..G3) are taken one by one; a failure does not stop the
// others of its stage (the expired failed trees, or the leftovers), but
// stops what comes after them. The steps of the journal's transaction, which
// come last, are taken by one call to protocol.Finish, which checks where the
// shadow is by its inode before each of them.
func apply(r *Report, n layout.Names, opts Options) error {
	fs := opts.FS
	if fs == nil {
		fs = fsys.OS{}
	}
	pfd := -1
	defer func() {
		if pfd >= 0 {
			unix.Close(pfd)
		}
	}()
	var errs []error
	for i, s := range r.Plan {
		if i > 0 && s.stage != r.Plan[i-1].stage {
			if err := stageFailed(n, r.Plan[i-1].stage, errs); err != nil {
				r.Error = err.Error()
				return err
			}
		}
		if s.stage == stageJournal {
			return finish(r, n, opts)
		}
		if pfd < 0 {
			var err error
			if pfd, err = n.OpenParent(); err != nil {
				err = stageFailed(n, s.stage, []error{err})
				r.Error = err.Error()
				return err
			}
		}
		if err := n.DropTree(fs, pfd, s.name, s.id, nil, opts.Progress.Of(protocol.ProgressRemove, 0)); err != nil {
			errs = append(errs, err)
			continue
		}
		r.Removed = append(r.Removed, s.Path)
	}
	if err := stageFailed(n, r.Plan[len(r.Plan)-1].stage, errs); err != nil {
		r.Error = err.Error()
		return err
	}
	r.Done = true
	return nil
}

// stageFailed says why the drops of stage st failed (errs), naming the
// directory and the stage; nil if none did.
func stageFailed(n layout.Names, st stage, errs []error) error {
	if len(errs) == 0 {
		return nil
	}
	what := "remove leftovers"
	if st == stageExpire {
		what = "remove failed trees"
	}
	return fmt.Errorf("%s: %s: %w", n.Dir, what, errors.Join(errs...))
}

// finish finishes the journal's transaction: the plan's steps from C4 or R1
// on (protocol.Finish). A failure that is not lost content needs a person.
func finish(r *Report, n layout.Names, opts Options) error {
	// As root, the transaction of another user is finished with that
	// user's identity: a planted journal can do no more than its planter.
	finish := protocol.Finish
	if r.Row == "29" {
		finish = protocol.FinishCommitted
	}
	res, err := finish(n, r.Journal, opts.FS, opts.Progress)
	if res != nil {
		r.Lost, r.Kept = res.Lost, res.Kept
	}
	var lost *protocol.LostContentError
	if err != nil && !errors.As(err, &lost) {
		err = fmt.Errorf("%s: %w: %w", n.Dir, ErrNeedsPerson, err)
		r.Error = err.Error()
		return err
	}
	r.Done = true
	if err != nil {
		r.Error = err.Error()
	}
	return err
}
