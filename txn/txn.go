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
// beside it hold enough to finish or undo the transaction: Finish finishes a
// transaction a crash left (package recover uses it). docs/protocol.md
// describes every step, every sync and every crash state.
//
// Where each step of docs/protocol.md is performed (the log's "step" field
// names it too; TestProtocolIDsInCode keeps the two in step):
//
//	B1 lock                     BeginContext (lock.Acquire)
//	B2 refuse, clear stale      Tx.checkClean
//	B3 mkdir shadow             BeginContext
//	B4 journal snapshot         Tx.setPhase, writeJournal
//	B5 build, manifest          Tx.build (snapshot.Build)
//	B6 syncfs                   BeginContext
//	B7 rename to complete       BeginContext
//	B8 journal running          Tx.setPhase
//	C1 syncfs                   Tx.Commit
//	C2 check writes in place    Tx.stopWatch, Tx.changed (snapshot.Changed)
//	C3 journal commit           Tx.setPhase: the commit point
//	C4 shadow to removal name   Tx.discard
//	C5 unlink journal           Tx.finish
//	C6 manifest away            Tx.finish
//	C7 delete removal trees     Tx.removeGarbage (snapshot.Remove)
//	C8 release the lock         Tx.close
//	R1 list lost content        Tx.Rollback, Tx.changed
//	R2 journal rollback         Tx.setPhase
//	R3 restore metadata         Tx.restore (snapshot.Restore)
//	R4 exchange                 Tx.swap
//	R5 syncfs                   Tx.putBack
//	R6 failed tree away         Tx.putBack
//	R7 as C5..C8                Tx.finish
//
// The crash-state rows are told apart by package recover (classify and
// checkShadow: rows 1 to 9, 14 to 16) and by Tx.putBack (rows 10 to 13,
// by where the shadow's inode is); Finish carries out rows 5 to 15.
//
// Every file-system mutation goes through an fsys.FS, so tests can record,
// fail or stop the protocol at any step.
package txn

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/creds"
	"github.com/treetx/treetx/internal/fswatch"
	"github.com/treetx/treetx/internal/fsys"
	"github.com/treetx/treetx/internal/safeopen"
	"github.com/treetx/treetx/lock"
	"github.com/treetx/treetx/snapshot"
)

// FS is the set of file-system mutations a transaction performs: every one
// goes through it, so that tests can record, fail or stop the protocol step
// by step. nil means the kernel's own calls. It is internal/fsys.FS, named
// here so that callers can name it.
type FS = fsys.FS

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
	// FS performs every mutation; nil means fsys.OS.
	FS FS
	// Progress, if set, is called every 10,000 entries or so of each
	// phase that grows with the tree (building the shadow, checking and
	// restoring the linked files, deleting a tree): the phase (one of the
	// Phase... constants), the entries done, and how many there are in all
	// (0 when not known).
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
}

// Tx is a transaction on one directory. It holds the directory's exclusive
// lock from Begin until Commit or Rollback returns.
type Tx struct {
	n       Names
	fs      fsys.FS
	lk      *lock.Lock
	pfd     int // the parent directory, open
	j       Journal
	log     *slog.Logger
	leftOut []string
	deferRm bool
	garbage []string // trees named for removal, when deferRm
	done    bool
	// enter, if set, gives each goroutine that deletes a tree the identity
	// the transaction is finished with (see Finish).
	enter func() error
	// progress reports long phases (Options.Progress); linked is how many
	// files the shadow links, when this process built it.
	progress Progress
	linked   int64

	// watch sees which files are touched from the build on; index finds
	// their manifest records. Both nil without a watch.
	watch *fswatch.Watch
	index *snapshot.Index
	// touched lists the inodes to check at the end (sorted), once the watch
	// is stopped; all is set where every file must be checked.
	touched []uint64
	all     bool
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
}

// Errors of a transaction that callers branch on.
var (
	// ErrNeedsRecovery: the directory holds what an interrupted transaction
	// left; run recovery first.
	ErrNeedsRecovery = errors.New("needs recovery")
	// ErrDone: Commit or Rollback was called on a finished transaction.
	ErrDone = errors.New("transaction already finished")
)

// LostContentError reports a rollback that restored everything but the old
// content of files written in place.
type LostContentError struct {
	Dir   string
	Paths []string // relative to Dir
	Kept  string   // the failed tree, kept for inspection
}

func (e *LostContentError) Error() string {
	return fmt.Sprintf("%s: rolled back, but the old content of %d file(s) written in place is lost (the failed tree is kept at %s)", e.Dir, len(e.Paths), e.Kept)
}

// Begin locks dir (waiting as opts.LockTimeout says), builds its shadow,
// makes the shadow durable and records the transaction as running. dir may
// be a symlink: it is resolved once, and the transaction is on the directory
// it names. On error nothing is left behind and the lock is released.
func Begin(dir string, opts Options) (*Tx, error) {
	return BeginContext(context.Background(), dir, opts)
}

// BeginContext is Begin with a context that can cancel the wait for the
// lock and the building of the shadow.
func BeginContext(ctx context.Context, dir string, opts Options) (tx *Tx, err error) {
	n, err := resolveDir(dir)
	if err != nil {
		return nil, err
	}
	cmd := opts.Command
	if cmd == nil {
		cmd = os.Args
	}
	// B1: lock, and record the holder.
	lk, err := lock.Acquire(ctx, n.Path(n.Lock), lock.Options{
		Mode: lock.Exclusive, Timeout: opts.lockTimeout(), Gate: n.Path(n.Gate), Self: lock.Holder{Command: cmd},
	})
	if opts.Locked != nil {
		opts.Locked()
	}
	if err != nil {
		return nil, err
	}
	tx = newTx(n, lk, opts.FS, opts.Logger)
	tx.deferRm, tx.progress = opts.DeferRemoval, opts.Progress
	defer func() {
		if err != nil {
			err = errors.Join(err, tx.abandon())
			tx = nil
		}
	}()
	if tx.pfd, err = openDir(n.Parent); err != nil {
		return tx, fmt.Errorf("open %s: %w", n.Parent, err)
	}
	if err := tx.checkClean(); err != nil { // B2
		return tx, err
	}
	holder := lock.Holder{Command: cmd}
	if h, herr := lock.ReadHolder(n.Path(n.Lock)); herr == nil && h != nil {
		holder = *h
	}
	if tx.j.ID, err = newID(); err != nil {
		return tx, err
	}
	tx.j.Version, tx.j.PID, tx.j.Host, tx.j.User = JournalVersion, os.Getpid(), holder.Host, holder.User
	tx.j.Owner = uint32(os.Geteuid())
	tx.j.Command, tx.j.Start = cmd, time.Now().UTC().Truncate(time.Millisecond)

	var st unix.Stat_t
	if err := unix.Stat(n.Dir, &st); err != nil {
		return tx, fmt.Errorf("stat %s: %w", n.Dir, err)
	}
	tx.j.Dir = fileID(&st)
	// Step: create the shadow root and record its inode in the journal.
	tx.step("B3", "mkdir shadow", n.Incomplete)
	if err := tx.fs.Mkdirat(tx.pfd, n.Incomplete, 0o700); err != nil {
		return tx, fmt.Errorf("create shadow %s: %w", n.Path(n.Incomplete), err)
	}
	if err := unix.Fstatat(tx.pfd, n.Incomplete, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return tx, fmt.Errorf("stat %s: %w", n.Path(n.Incomplete), err)
	}
	tx.j.Shadow = fileID(&st)
	if err := tx.setPhase("B4", PhaseSnapshot); err != nil {
		return tx, err
	}
	if err := tx.build(ctx, opts); err != nil {
		return tx, err
	}
	// Step: the shadow and its manifest are durable before it is complete.
	tx.step("B6", "syncfs", n.Parent)
	if err := tx.fs.Syncfs(tx.pfd); err != nil {
		return tx, fmt.Errorf("make shadow durable: syncfs %s: %w", n.Parent, err)
	}
	tx.step("B7", "rename", n.Complete)
	if err := tx.fs.Renameat2(tx.pfd, n.Incomplete, tx.pfd, n.Complete, unix.RENAME_NOREPLACE); err != nil {
		return tx, fmt.Errorf("rename %s to %s: %w", n.Path(n.Incomplete), n.Complete, err)
	}
	if err := tx.fsyncParent("B7"); err != nil {
		return tx, err
	}
	if err := tx.setPhase("B8", PhaseRunning); err != nil {
		return tx, err
	}
	return tx, nil
}

// lockTimeout is the wait for the lock in lock.Options's terms (negative:
// until had; zero: once).
func (o *Options) lockTimeout() time.Duration {
	switch {
	case o.NoWait:
		return 0
	case o.LockTimeout <= 0:
		return -1
	}
	return o.LockTimeout
}

func newTx(n Names, lk *lock.Lock, fs fsys.FS, log *slog.Logger) *Tx {
	if fs == nil {
		fs = fsys.OS{}
	}
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &Tx{n: n, fs: fs, lk: lk, pfd: -1, log: log, all: true}
}

// build fills the shadow and writes the manifest.
func (tx *Tx) build(ctx context.Context, opts Options) error {
	n := tx.n
	exclude, err := snapshot.NewMatcher(append(snapshot.DefaultExcludes(), opts.Exclude...)...)
	if err != nil {
		return fmt.Errorf("--exclude: %w", err)
	}
	copies := opts.Copy
	if !opts.NoCVSCopies {
		if fi, err := os.Stat(n.Dir + "/CVSROOT"); err == nil && fi.IsDir() {
			copies = append(copies, snapshot.CVSCopies()...)
		}
	}
	copyM, err := snapshot.NewMatcher(copies...)
	if err != nil {
		return fmt.Errorf("--copy: %w", err)
	}
	tx.step("B5", "create manifest", n.Meta)
	if err := tx.fs.Unlinkat(tx.pfd, n.Meta, 0); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("remove stale %s: %w", n.Path(n.Meta), err)
	}
	mfd, err := tx.fs.Create(tx.pfd, n.Meta, 0o600)
	if err != nil {
		return fmt.Errorf("create manifest %s: %w", n.Path(n.Meta), err)
	}
	defer unix.Close(mfd)
	mw := snapshot.NewManifestWriter(fdWriter{tx.fs, mfd})
	if !opts.FullCheck {
		// The watch starts before the first link, so that no write to a
		// linked file can fall between its record and the watch; the
		// attribute changes the build's own links make are left out.
		w, err := fswatch.Start(tx.pfd, fswatch.Content)
		if err != nil {
			tx.log.Debug("no file-system watch: every linked file is checked at the end", "err", err)
		} else {
			tx.watch = w
			mw.KeepIndex()
		}
	}
	tx.step("B5", "build shadow", n.Incomplete)
	stats, err := snapshot.Build(n.Dir, tx.pfd, n.Incomplete, snapshot.Options{
		Context: ctx, FS: tx.fs, Exclude: exclude, Copy: copyM, Manifest: mw,
		Progress: tx.progress.of(ProgressBuild, 0), Logger: tx.log, AllowOwnerChange: opts.AllowOwnerChange,
	})
	if err != nil {
		return err
	}
	tx.leftOut, tx.linked = stats.Excluded, stats.Links
	if err := mw.Close(); err != nil {
		return fmt.Errorf("write manifest %s: %w", n.Path(n.Meta), err)
	}
	if tx.watch != nil {
		err := tx.watch.Add(fswatch.Attributes)
		if tx.index = mw.Index(); err == nil && tx.index == nil {
			err = errors.New("manifest too big to index")
		}
		if err != nil {
			tx.log.Debug("no file-system watch: every linked file is checked at the end", "err", err)
			tx.watch.Close()
			tx.watch, tx.index = nil, nil
		}
	}
	tx.log.Debug("shadow built", "dirs", stats.Dirs, "links", stats.Links, "copies", stats.Copies, "symlinks", stats.Symlinks, "left out", len(stats.Excluded))
	return nil
}

// checkClean refuses a directory whose parent holds leftovers of an
// unfinished transaction, or shadow names treetx did not make, and clears
// stale files no journal refers to.
func (tx *Tx) checkClean() error {
	n := tx.n
	if _, err := os.Lstat(n.Path(n.Journal)); err == nil {
		return fmt.Errorf("%s: %w: %s records an unfinished transaction; run: treetx recover %s", n.Dir, ErrNeedsRecovery, n.Path(n.Journal), n.Dir)
	}
	for _, name := range []string{n.Incomplete, n.Complete} {
		if _, err := os.Lstat(n.Path(name)); err == nil {
			return fmt.Errorf("%s: %w: %s exists but no journal claims it (not made by a treetx transaction); move it away, or run: treetx recover %s", n.Dir, ErrNeedsRecovery, n.Path(name), n.Dir)
		}
	}
	for _, name := range []string{n.JournalTmp, n.Meta} {
		err := tx.fs.Unlinkat(tx.pfd, name, 0)
		if errors.Is(err, unix.EISDIR) {
			// Not treetx's (it makes files there), but under its name:
			// garbage, named for removal and deleted with the rest.
			err = tx.nameForRemoval(name)
		}
		if err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("remove stale %s: %w", n.Path(name), err)
		}
	}
	return nil
}

// nameForRemoval renames the tree name in the parent to a new removal
// name, durably.
func (tx *Tx) nameForRemoval(name string) error {
	for try := 0; ; try++ {
		id, err := newID()
		if err != nil {
			return err
		}
		tx.step("B2", "rename", tx.n.Removing(id))
		err = tx.fs.Renameat2(tx.pfd, name, tx.pfd, tx.n.Removing(id), unix.RENAME_NOREPLACE)
		if err == nil {
			return tx.fsyncParent("B2")
		}
		if !errors.Is(err, unix.EEXIST) || try >= 3 {
			return fmt.Errorf("rename %s to %s: %w", tx.n.Path(name), tx.n.Removing(id), err)
		}
	}
}

// RemoveTree deletes a tree under one of treetx's names that no journal
// claims (a removal name an earlier transaction left, a failed tree gc
// expires, a directory planted under a file's name): name in the parent pfd
// of the directory n, never following a symlink nor leaving its file
// system. enter, if not nil, is the identity to delete with (see Finish).
// Else, as root, a tree whose root another user owns than root or the owner
// of the directory n (to whom the shadows of root's transactions belong) is
// deleted with that user's identity: it may have been planted, and root then
// deletes no more of it than its owner could.
//
// progress, if set, reports the deletion as Options.Progress does.
func RemoveTree(n Names, pfd int, name string, fs FS, enter func() error, progress Progress) error {
	if enter == nil {
		enter = ownerOf(n, pfd, name)
	}
	return snapshot.RemoveWith(n.Parent, name, snapshot.RemoveOptions{FS: fs, Enter: enter, Progress: progress.of(ProgressRemove, 0)})
}

// ownerOf returns, when this process is root, the identity to delete the
// tree name in pfd with (see RemoveTree): its root's owner when that is
// neither root nor the owner of the directory n; nil otherwise.
func ownerOf(n Names, pfd int, name string) func() error {
	if os.Geteuid() != 0 {
		return nil
	}
	var st, dst unix.Stat_t
	if err := unix.Fstatat(pfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil || st.Uid == 0 {
		return nil
	}
	if unix.Fstatat(pfd, n.Base, &dst, unix.AT_SYMLINK_NOFOLLOW) == nil && dst.Uid == st.Uid {
		return nil
	}
	id := creds.Of(st.Uid)
	return creds.Worker(&id)
}

// removeOptions are the options the transaction's own trees are deleted
// with.
func (tx *Tx) removeOptions() snapshot.RemoveOptions {
	return snapshot.RemoveOptions{FS: tx.fs, Enter: tx.enter, Progress: tx.progress.of(ProgressRemove, 0)}
}

// Progress receives how a long phase of a transaction is going: see
// Options.Progress.
type Progress func(phase string, done, total int64)

// The phases Progress names.
const (
	ProgressBuild   = "building the shadow"
	ProgressCheck   = "checking the linked files"
	ProgressRestore = "restoring the linked files' metadata"
	ProgressRemove  = "deleting the thrown-away tree"
)

// of returns a snapshot progress function reporting phase (nil if p is).
func (p Progress) of(phase string, total int64) func(int64) {
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

// Dir is the directory of the transaction (resolved, absolute).
func (tx *Tx) Dir() string { return tx.n.Dir }

// ID is the transaction's id, as its journal records it.
func (tx *Tx) ID() string { return tx.j.ID }

// LockFile returns a new descriptor of the transaction's lock, for a child
// process to inherit (exec.Cmd.ExtraFiles): the lock then stays held until
// the child and every descendant that inherited it have exited, even if this
// process is killed. The caller closes it after starting the child.
func (tx *Tx) LockFile() (*os.File, error) { return tx.lk.Inheritable() }

// step logs a step of the protocol: id is its name in docs/protocol.md
// (B1..B8, C1..C8, R1..R7).
func (tx *Tx) step(id, what, name string) {
	tx.log.Debug("step", "step", id, "do", what, "name", name)
}

func (tx *Tx) setPhase(id string, p Phase) error {
	tx.step(id, "journal "+string(p), tx.n.Journal)
	tx.j.Phase = p
	return writeJournal(tx.fs, tx.pfd, tx.n, &tx.j)
}

func (tx *Tx) fsyncParent(id string) error {
	tx.step(id, "fsync", tx.n.Parent)
	if err := tx.fs.Fsync(tx.pfd); err != nil {
		return fmt.Errorf("fsync %s: %w", tx.n.Parent, err)
	}
	return nil
}

// close releases the lock (C8) and the parent's descriptor.
func (tx *Tx) close() error {
	tx.done = true
	if tx.watch != nil {
		tx.watch.Close()
		tx.watch = nil
	}
	if tx.pfd >= 0 {
		unix.Close(tx.pfd)
		tx.pfd = -1
	}
	return tx.lk.Release()
}

// abandon undoes a Begin that failed: the directory was never touched, so
// the shadow (only if it is the one this transaction made), its manifest
// and the journal are removed.
func (tx *Tx) abandon() error {
	defer tx.close()
	if tx.pfd < 0 || tx.j.Shadow.Ino == 0 {
		return nil
	}
	tx.deferRm = false // the caller gets no Result to find the garbage in
	return tx.discard()
}

// discard drops the shadow of a transaction that never touched the
// directory, or whose commit is durable: it renames the shadow (whichever of
// its names holds the journal's inode) to a removal name, makes that
// durable, removes the journal and the manifest, then deletes the tree. If
// the rename fails (a full btrfs refuses renames with ENOSPC), the shadow is
// deleted in place before the journal is removed: the journal's phase already
// says it is garbage, so a crash midway leaves a state recovery finishes.
func (tx *Tx) discard() error {
	n := tx.n
	for _, name := range []string{n.Incomplete, n.Complete} {
		var st unix.Stat_t
		if err := unix.Fstatat(tx.pfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue
			}
			return fmt.Errorf("stat %s: %w", n.Path(name), err)
		}
		if err := tx.isShadow(name, &st); err != nil {
			return fmt.Errorf("%w: left alone", err)
		}
		tx.step("C4", "rename", n.Removing(tx.j.ID))
		if err := tx.fs.Renameat2(tx.pfd, name, tx.pfd, n.Removing(tx.j.ID), unix.RENAME_NOREPLACE); err != nil {
			tx.step("C4", "remove tree in place", name)
			if rmErr := snapshot.RemoveWith(n.Parent, name, tx.removeOptions()); rmErr != nil {
				return errors.Join(fmt.Errorf("rename %s to %s: %w", n.Path(name), n.Removing(tx.j.ID), err), rmErr)
			}
			continue
		}
		if err := tx.fsyncParent("C4"); err != nil {
			return err
		}
	}
	return tx.finish()
}

// finish ends a transaction whose directory is in its final state: it
// removes the journal durably (the transaction is over), then the manifest,
// then deletes the trees named for removal. The manifest goes after the
// journal: a journal without its manifest could not be recovered, a manifest
// without a journal is garbage. It is moved into this transaction's removal
// tree where there is one, to be deleted with it: unlinking a big file takes
// time (some 20 ms for the 100 MB of a million files).
func (tx *Tx) finish() error {
	n := tx.n
	tx.step("C5", "unlink", n.Journal)
	if err := tx.fs.Unlinkat(tx.pfd, n.Journal, 0); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("remove %s: %w", n.Path(n.Journal), err)
	}
	if err := tx.fsyncParent("C5"); err != nil {
		return err
	}
	if tx.j.ID != "" {
		into := n.Removing(tx.j.ID) + "/" + n.Meta
		tx.step("C6", "rename", into)
		if err := tx.fs.Renameat2(tx.pfd, n.Meta, tx.pfd, into, unix.RENAME_NOREPLACE); err != nil {
			tx.log.Debug("manifest not moved into the removal tree; unlinked", "err", err)
		}
	}
	for _, name := range []string{n.Meta, n.JournalTmp} {
		tx.step("C6", "unlink", name)
		if err := tx.fs.Unlinkat(tx.pfd, name, 0); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("remove %s: %w", n.Path(name), err)
		}
	}
	return tx.removeGarbage()
}

// removeGarbage deletes every tree of the directory named for removal, or
// with DeferRemoval lists them in tx.garbage.
func (tx *Tx) removeGarbage() error {
	names, err := safeopen.ReadNames(tx.pfd, tx.n.Parent)
	if err != nil {
		return err
	}
	var errs []error
	for _, name := range names {
		if tx.n.Classify(name) != KindRemoving {
			continue
		}
		own := name == tx.n.Removing(tx.j.ID)
		if tx.deferRm && (own || tx.enter == nil && ownerOf(tx.n, tx.pfd, name) == nil) {
			// Left to the caller, who deletes with this process's
			// identity (treetx run's detached cleaner): this
			// transaction's own tree, or one that RemoveTree too would
			// delete as this process is. Another user's tree (planted,
			// or left by a transaction of theirs) is deleted here, as
			// its owner.
			tx.garbage = append(tx.garbage, tx.n.Path(name))
			continue
		}
		tx.step("C7", "remove tree", name)
		if own {
			// This transaction's own: the shadow or the failed tree.
			errs = append(errs, snapshot.RemoveWith(tx.n.Parent, name, tx.removeOptions()))
			continue
		}
		errs = append(errs, RemoveTree(tx.n, tx.pfd, name, tx.fs, tx.enter, tx.progress))
	}
	return errors.Join(errs...)
}

// RemoveGarbage deletes trees that transactions named for removal
// (Result.Garbage): each path must be a ".#treetx.NAME.removing.ID" name, or
// it is refused. It takes no lock: such trees belong to no transaction.
// Several RemoveGarbage calls on one tree may run at once.
func RemoveGarbage(paths []string, fs FS) error {
	var errs []error
	for _, p := range paths {
		parent, name := filepath.Dir(p), filepath.Base(p)
		base, ok := removalBase(name)
		if !ok {
			errs = append(errs, fmt.Errorf("%s: not a tree named for removal; left alone", p))
			continue
		}
		n, err := NamesFor(filepath.Join(parent, base))
		if err != nil || n.Classify(name) != KindRemoving {
			errs = append(errs, fmt.Errorf("%s: not a tree named for removal; left alone", p))
			continue
		}
		errs = append(errs, snapshot.Remove(parent, name, fs))
	}
	return errors.Join(errs...)
}

// removalBase returns the directory base name of a removal name
// ".#treetx.NAME.removing.ID".
func removalBase(name string) (string, bool) {
	rest, ok := strings.CutPrefix(name, Prefix)
	if !ok || len(rest) < len(".removing.")+idLen {
		return "", false
	}
	base, suffix := rest[:len(rest)-len(".removing.")-idLen], rest[len(rest)-len(".removing.")-idLen:]
	if !strings.HasPrefix(suffix, ".removing.") || base == "" {
		return "", false
	}
	return base, true
}

func openDir(path string) (int, error) { return safeopen.OpenDir(path) }

// fdWriter writes to a descriptor through the seam.
type fdWriter struct {
	fs fsys.FS
	fd int
}

func (w fdWriter) Write(p []byte) (int, error) {
	if err := w.fs.Write(w.fd, p); err != nil {
		return 0, err
	}
	return len(p), nil
}
