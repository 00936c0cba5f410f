package recover

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/fsys"
	"github.com/treetx/treetx/txn"
)

// GCOptions configures GC.
type GCOptions struct {
	Options
	// FailedOlderThan is the age past which a failed tree kept for
	// inspection (.#treetx.NAME.failed.ID) is removed; zero removes them
	// all. A failed tree's age is the time since its root's status last
	// changed (ctime), which is when the rollback renamed it there unless
	// someone changed it since.
	FailedOlderThan time.Duration
	// Now is the time ages are measured from; zero means time.Now().
	Now time.Time
}

// DefaultFailedAge is the age past which treetx gc removes failed trees
// unless told otherwise: they hold what a failed command wrote over files
// whose old content is lost, the only evidence a person has, and cost
// little space (their files are mostly hard links shared with the tree).
const DefaultFailedAge = 30 * 24 * time.Hour

// GC is Recover, plus the removal of the failed trees kept beside dir that
// are older than opts.FailedOlderThan. Leftovers are removed only under the
// lock, taken without waiting: a live transaction is never touched. A tree
// is first renamed to a removal name and that rename made durable, so a
// crash never leaves it half deleted under another name.
func GC(dir string, opts GCOptions) (*Report, error) {
	return recoverDir(dir, opts.Options, &opts)
}

// expireFailed removes (or in a dry run lists) the failed trees older than
// gc.FailedOlderThan, except one the journal's own transaction made.
func expireFailed(r *Report, n txn.Names, fs fsys.FS, gc *GCOptions) error {
	now := gc.Now
	if now.IsZero() {
		now = time.Now()
	}
	var old []string
	for _, name := range r.failed {
		if r.Journal != nil && name == n.Failed(r.Journal.ID) {
			continue
		}
		var st unix.Stat_t
		if err := unix.Lstat(n.Path(name), &st); err != nil {
			continue
		}
		if changed := time.Unix(st.Ctim.Unix()); now.Sub(changed) >= gc.FailedOlderThan {
			old = append(old, name)
		}
	}
	if len(old) == 0 {
		return nil
	}
	what := fmt.Sprintf("remove %d failed tree(s) kept for inspection, older than %v", len(old), gc.FailedOlderThan)
	if r.Action == "" {
		r.Action = what
	} else {
		r.Action = what + "; " + r.Action
	}
	if r.State == StateIdle {
		r.Found = fmt.Sprintf("failed tree(s) older than %v: %s", gc.FailedOlderThan, strings.Join(old, ", "))
	}
	if gc.DryRun {
		for _, name := range old {
			r.Removed = append(r.Removed, n.Path(name))
		}
		return nil
	}
	pfd, err := openDir(n.Parent)
	if err != nil {
		return err
	}
	defer unix.Close(pfd)
	var errs []error
	for _, name := range old {
		id := strings.TrimPrefix(name, txn.Prefix+n.Base+".failed.")
		if err := dropTree(fs, gc.Progress, pfd, n, name, id); err != nil {
			errs = append(errs, err)
			continue
		}
		r.Removed = append(r.Removed, n.Path(name))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%s: remove failed trees: %w", n.Dir, err)
	}
	return nil
}

// dropTree deletes name in the parent pfd. A directory not already under a
// removal name is first renamed to one (id, or a new id if that is taken)
// and the rename made durable, so that a crash leaves it whole under its old
// name or under a name that says it is garbage, never half deleted under a
// name that means something else.
func dropTree(fs fsys.FS, progress txn.Progress, pfd int, n txn.Names, name, id string) error {
	var st unix.Stat_t
	if err := unix.Fstatat(pfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("stat %s: %w", n.Path(name), err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		if err := fs.Unlinkat(pfd, name, 0); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("remove %s: %w", n.Path(name), err)
		}
		return nil
	}
	target := name
	if n.Classify(name) != txn.KindRemoving {
		for try := 0; ; try++ {
			if id == "" || try > 0 {
				var err error
				if id, err = newID(); err != nil {
					return err
				}
			}
			target = n.Removing(id)
			err := fs.Renameat2(pfd, name, pfd, target, unix.RENAME_NOREPLACE)
			if err == nil {
				break
			}
			if !errors.Is(err, unix.EEXIST) || try >= 3 {
				return fmt.Errorf("rename %s to %s: %w", n.Path(name), target, err)
			}
		}
		if err := fs.Fsync(pfd); err != nil {
			return fmt.Errorf("fsync %s: %w", n.Parent, err)
		}
	}
	return txn.RemoveTree(n, pfd, target, fs, nil, progress)
}

// newID returns a new 16-hex-digit id for a removal name.
func newID() (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("removal id: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}
