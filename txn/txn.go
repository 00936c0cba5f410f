// Package txn makes what a program does to a directory tree atomic and
// crash-safe.
//
// Begin locks a directory, builds its hard-link shadow beside it (package
// snapshot) and records the transaction in a journal beside it. The caller
// then changes the directory in place. Commit makes the changes durable and
// drops the shadow; Rollback puts the shadow back in place of the directory
// with renames inside the parent, so that the directory is exactly as it was.
// Run does all of this around a command.
//
// After a crash at any instant, the directory, its journal and the names
// beside it hold enough to finish or undo the transaction: package recover
// does it. docs/protocol.md describes every step, every sync and every crash
// state; the steps are performed by internal/protocol, whose package doc maps
// each to its function.
package txn

import (
	"context"
	"log/slog"
	"os"
	"time"

	"github.com/treetx/treetx/internal/fsys"
	"github.com/treetx/treetx/internal/protocol"
)

// FS is the set of file-system mutations a transaction performs: every one
// goes through it, so that tests can record, fail or stop the protocol step
// by step. nil means the kernel's own calls.
type FS = fsys.FS

// Progress receives how a long phase of a transaction is going: it is a
// func(phase string, done, total int64), called every 10,000 entries or so
// with the phase (one of the Progress... constants), the entries done, and
// how many there are in all (0 when not known).
type Progress = protocol.Progress

// The phases Progress names.
const (
	ProgressBuild   = protocol.ProgressBuild
	ProgressCheck   = protocol.ProgressCheck
	ProgressRestore = protocol.ProgressRestore
	ProgressRemove  = protocol.ProgressRemove
)

// Options configures a transaction.
type Options struct {
	// Exclude lists globs (see snapshot.Matcher) of entries the shadow leaves
	// out, in addition to snapshot.DefaultExcludes.
	Exclude []string
	// Copy lists globs of regular files the shadow holds real copies of,
	// because they are written in place. In a CVS repository (a directory
	// with CVSROOT/) snapshot.CVSCopies are added unless NoCVSCopies is set.
	Copy        []string
	NoCVSCopies bool
	// LockTimeout bounds the wait for the directory's lock; zero (the
	// default) or negative waits until it is had, as the command line does.
	LockTimeout time.Duration
	// NoWait tries the lock once instead of waiting (flock -n): a held
	// lock fails Begin at once with a *lock.HeldError.
	NoWait bool
	// Command is recorded in the journal and the lock file; os.Args if nil.
	Command []string
	// FS performs every mutation; nil means the kernel's own calls.
	FS FS
	// Progress, if set, is called every 10,000 entries or so of each
	// phase that grows with the tree (building the shadow, checking and
	// restoring the linked files, deleting a tree).
	Progress Progress
	// Locked, if set, is called once the directory's lock is had (B1),
	// before the shadow is built: the end of a wait a caller may show.
	Locked func()
	// Logger receives a debug line per step; nil discards.
	Logger *slog.Logger
	// AllowOwnerChange: see snapshot.Options.AllowOwnerChange.
	AllowOwnerChange bool
	// DeferRemoval leaves the trees that a finished transaction named for
	// removal (the dropped shadow, the failed tree) to the caller, listed in
	// Result.Garbage, instead of deleting them before Commit or Rollback
	// returns: deleting a big tree takes time, and nothing depends on it.
	// Trees left so are garbage under any lock: RemoveGarbage, a later
	// transaction, recovery or gc deletes them.
	DeferRemoval bool
	// FullCheck checks every hard-linked file for writes in place and
	// changed metadata at the end, as recovery does. Without it, where the
	// kernel allows a file-system watch (fanotify, for root), only the files
	// some process opened, read, wrote or changed the attributes of while
	// the transaction ran are checked, so that Commit and Rollback take a
	// time that grows with what the command touched, not with the tree.
	FullCheck bool
	// Mode is how the shadow is made: ModeAuto ("" too) takes a btrfs
	// snapshot where the directory is the root of a subvolume, and hard
	// links elsewhere; ModeSnapshot and ModeHardlink refuse a directory
	// the mode cannot be used on. In snapshot mode Exclude must be empty
	// (a snapshot holds the whole tree), and Copy, FullCheck and
	// AllowOwnerChange have nothing to do: nothing is linked.
	Mode Mode
}

// Mode is how a transaction's shadow is made (docs/protocol.md, "Snapshot
// mode").
type Mode = protocol.Mode

// The modes.
const (
	// ModeAuto: a snapshot where the directory is the root of a btrfs
	// subvolume (and no mount point), hard links elsewhere.
	ModeAuto = protocol.ModeAuto
	// ModeHardlink: a shadow of hard links, with a manifest.
	ModeHardlink = protocol.ModeHardlink
	// ModeSnapshot: the shadow is a writable btrfs snapshot.
	ModeSnapshot = protocol.ModeSnapshot
)

// Tx is a transaction on one directory. It holds the directory's exclusive
// lock from Begin until Commit or Rollback returns.
type Tx struct {
	tx *protocol.Tx
}

// Result says what a finished transaction found.
type Result struct {
	// LeftOut lists the entries (relative paths) the shadow left out: lock
	// and temporary files, and --exclude matches. They are outside the
	// transaction; a rollback does not bring them back.
	LeftOut []string
	// InPlace lists, at commit, the hard-linked files whose content was
	// written in place: had the transaction failed, their old content would
	// have been lost.
	InPlace []string
	// Lost lists, at rollback, the hard-linked files whose old content was
	// lost: they were written in place, through the inode the shadow shares.
	Lost []string
	// Kept is the path of the failed tree, kept for inspection when Lost is
	// not empty.
	Kept string
	// Garbage lists the trees named for removal that are left to delete
	// (Options.DeferRemoval): pass them to RemoveGarbage.
	Garbage []string
	// Unchanged is set by a rollback that found the directory as the
	// command found it: it was ended without putting the shadow in its
	// place, so its inodes (and every working directory inside) stay.
	Unchanged bool
}

// Errors of a transaction that callers branch on.
var (
	// ErrNeedsRecovery: the directory holds what an interrupted transaction
	// left; run recovery first.
	ErrNeedsRecovery = protocol.ErrNeedsRecovery
	// ErrDone: Commit or Rollback was called on a finished transaction.
	ErrDone = protocol.ErrDone
)

// LostContentError reports a rollback that restored everything but the old
// content of files written in place: the directory Dir, the files (Paths,
// relative to Dir), and the failed tree kept for inspection (Kept).
type LostContentError = protocol.LostContentError

// Begin locks dir (waiting as opts.LockTimeout says), builds its shadow,
// makes the shadow durable and records the transaction as running. dir may
// be a symlink: it is resolved once, and the transaction is on the directory
// it names. On error nothing is left behind and the lock is released.
func Begin(dir string, opts Options) (*Tx, error) {
	return BeginContext(context.Background(), dir, opts)
}

// BeginContext is Begin with a context that can cancel the wait for the
// lock and the building of the shadow.
func BeginContext(ctx context.Context, dir string, opts Options) (*Tx, error) {
	tx, err := protocol.Begin(ctx, dir, protocol.Options(opts))
	if err != nil {
		return nil, err
	}
	return &Tx{tx: tx}, nil
}

// Commit makes the changes to the directory durable, then drops the shadow
// and releases the lock. Once its journal says "commit" (after the changes
// are durable), a crash finishes the commit on recovery; before, a crash
// rolls back. The result lists the linked files that were written in place,
// as a warning: had the transaction failed, their old content was lost.
func (tx *Tx) Commit() (*Result, error) {
	return result(tx.tx.Commit())
}

// Rollback puts the shadow back in place of the directory, so that it is
// exactly as it was at Begin, and releases the lock. Entries the shadow left
// out (Result.LeftOut) are not brought back. If linked files were written in
// place, everything else is still restored, the failed tree is kept beside
// the directory and the error is a *LostContentError. A crash at any step
// leaves a state recovery finishes.
func (tx *Tx) Rollback() (*Result, error) {
	return result(tx.tx.Rollback())
}

func result(r *protocol.Result, err error) (*Result, error) {
	if r == nil {
		return nil, err
	}
	res := Result(*r)
	return &res, err
}

// Dir is the directory of the transaction (resolved, absolute).
func (tx *Tx) Dir() string { return tx.tx.Dir() }

// ID is the transaction's id, as its journal records it.
func (tx *Tx) ID() string { return tx.tx.ID() }

// LockFile returns a new descriptor of the transaction's lock, for a child
// process to inherit (exec.Cmd.ExtraFiles): the lock then stays held until
// the child and every descendant that inherited it have exited, even if this
// process is killed. The caller closes it after starting the child.
func (tx *Tx) LockFile() (*os.File, error) { return tx.tx.LockFile() }

// RemoveGarbage deletes trees that transactions named for removal
// (Result.Garbage, with Options.DeferRemoval): each path must be a
// ".#treetx.NAME.removing.ID" name, or it is refused. It takes no lock: such
// trees belong to no transaction. Several RemoveGarbage calls on one tree
// may run at once. fs performs every mutation (nil: the kernel's own calls).
func RemoveGarbage(paths []string, fs FS) error {
	return protocol.RemoveGarbage(paths, fs)
}
