package recover

import (
	"time"
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
// are older than opts.FailedOlderThan (first in the plan: steps G2). Leftovers are removed only under the
// lock, taken without waiting: a live transaction is never touched. A tree
// is first renamed to a removal name and that rename made durable, so a
// crash never leaves it half deleted under another name.
func GC(dir string, opts GCOptions) (*Report, error) {
	return recoverDir(dir, opts.Options, &opts)
}
