package protocol

import (
	"errors"
	"fmt"

	"github.com/treetx/treetx/snapshot"
)

// Result says what a finished transaction found. It is txn.Result, which
// documents it, field for field: txn converts one into the other.
type Result struct {
	LeftOut   []string
	InPlace   []string
	Lost      []string
	Kept      string
	Garbage   []string
	Unchanged bool
}

// Errors of a transaction that callers branch on (txn exports them).
var (
	// ErrNeedsRecovery: the directory holds what an interrupted transaction
	// left; run recovery first.
	ErrNeedsRecovery = errors.New("needs recovery")
	// ErrDone: Commit or Rollback was called on a finished transaction.
	ErrDone = errors.New("transaction already finished")
)

// LostContentError reports a rollback that restored everything but the old
// content of files written in place (txn.LostContentError).
type LostContentError struct {
	Dir   string
	Paths []string // relative to Dir
	Kept  string   // the failed tree, kept for inspection
}

// Error says that the directory was rolled back but for the old content of
// how many files, and where the failed tree is kept.
func (e *LostContentError) Error() string {
	return fmt.Sprintf("%s: rolled back, but the old content of %d file(s) written in place is lost (the failed tree is kept at %s)", e.Dir, len(e.Paths), e.Kept)
}

// Progress receives how a long phase of a transaction is going: the phase
// (one of the Progress... constants), the entries done, and how many there
// are in all (0 when not known). It is called every 10,000 entries or so.
type Progress func(phase string, done, total int64)

// The phases Progress names.
const (
	ProgressBuild   = "building the shadow"
	ProgressCheck   = "checking the linked files"
	ProgressRestore = "restoring the linked files' metadata"
	ProgressRemove  = "deleting the thrown-away tree"
)

// Of returns a function that reports progress of phase, of total entries,
// to p: what packages snapshot and layout take (nil if p is nil).
func (p Progress) Of(phase string, total int64) func(int64) {
	if p == nil {
		return nil
	}
	return func(done int64) { p(phase, done, total) }
}

// counted reports every 10,000th record that recs yields as progress of
// phase.
func (tx *Tx) counted(phase string, recs snapshot.Records) snapshot.Records {
	if tx.progress == nil {
		return recs
	}
	total := int64(len(tx.touched))
	if tx.all {
		total = tx.linked
	}
	return func(fn func(snapshot.Record) error) error {
		var n int64
		return recs(func(r snapshot.Record) error {
			if n++; n%10000 == 0 {
				tx.progress(phase, n, total)
			}
			return fn(r)
		})
	}
}
