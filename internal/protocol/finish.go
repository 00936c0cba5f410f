package protocol

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/creds"
	"github.com/treetx/treetx/internal/fsys"
	"github.com/treetx/treetx/internal/layout"
	"github.com/treetx/treetx/internal/safeopen"
	"github.com/treetx/treetx/snapshot"
)

// Commit makes the changes to the directory durable, then drops the shadow
// and releases the lock. Once its journal says "commit" (after the changes
// are durable), a crash finishes the commit on recovery; before, a crash
// rolls back. The result lists the linked files that were written in place,
// as a warning: had the transaction failed, their old content was lost.
func (tx *Tx) Commit() (*Result, error) {
	if tx.done {
		return nil, ErrDone
	}
	defer tx.close()
	res := &Result{LeftOut: tx.leftOut}
	if tx.j.Phase == layout.PhaseRunning {
		inPlace, err := tx.prepareCommit()
		if err != nil {
			return res, err
		}
		res.InPlace = inPlace
	}
	return tx.endCommit(res)
}

// prepareCommit takes the steps of a commit before its commit point: the
// command's changes made durable (C1), and the list of the linked files
// written in place (C2).
func (tx *Tx) prepareCommit() ([]string, error) {
	n := tx.n
	// Step: the command's changes are durable before the commit point.
	tx.step("C1", "syncfs", n.Parent)
	if err := tx.fs.Syncfs(tx.pfd); err != nil {
		return nil, fmt.Errorf("commit: make changes durable: syncfs %s: %w", n.Dir, err)
	}
	if err := tx.expectShadowAt(n.Complete); err != nil {
		return nil, fmt.Errorf("commit: %w", err)
	}
	// C2: what was written in place is a warning now, lost content at
	// a rollback.
	// R1: list the linked files whose old content is lost.
	tx.stopWatch()
	inPlace, err := tx.changed(n.Complete)
	if err != nil {
		return nil, fmt.Errorf("commit: %w", err)
	}
	return inPlace, nil
}

// endCommit takes the steps of a commit from its commit point on: the
// journal says commit (C3), then the shadow is dropped (C4..C8).
func (tx *Tx) endCommit(res *Result) (*Result, error) {
	switch tx.j.Phase {
	case layout.PhaseRunning:
		if err := tx.setPhase("C3", layout.PhaseCommit); err != nil {
			return res, fmt.Errorf("commit: %w", err)
		}
	case layout.PhaseCommit:
	default:
		return res, fmt.Errorf("commit: transaction is in phase %q", tx.j.Phase)
	}
	err := tx.discard()
	res.Garbage = tx.garbage
	if err != nil {
		return res, fmt.Errorf("commit: drop shadow: %w", err)
	}
	return res, nil
}

// Rollback puts the shadow back in place of the directory, so that it is
// exactly as it was at Begin, and releases the lock. Entries the shadow left
// out (Result.LeftOut) are not brought back. If linked files were written in
// place, everything else is still restored, the failed tree is kept beside
// the directory and the error is a *LostContentError. A crash at any step
// leaves a state recovery finishes.
func (tx *Tx) Rollback() (*Result, error) {
	if tx.done {
		return nil, ErrDone
	}
	defer tx.close()
	n := tx.n
	res := &Result{LeftOut: tx.leftOut}
	switch tx.j.Phase {
	case layout.PhaseSnapshot:
		// The directory was never touched.
		err := tx.discard()
		res.Garbage = tx.garbage
		if err != nil {
			return res, fmt.Errorf("rollback: drop shadow: %w", err)
		}
		return res, nil
	case layout.PhaseRunning:
		if err := tx.expectShadowAt(n.Complete); err != nil {
			return res, fmt.Errorf("rollback: %w", err)
		}
		tx.stopWatch()
		lost, err := tx.changed(n.Complete)
		if err != nil {
			return res, fmt.Errorf("rollback: %w", err)
		}
		if len(lost) == 0 && !tx.noUnchanged {
			same, err := tx.unchanged(n.Complete)
			if err != nil {
				tx.log.Debug("comparing the directory with its shadow failed: putting the shadow back", "err", err)
			}
			if same {
				return tx.endUnchanged(res)
			}
		}
		tx.j.Lost = lost
		if err := tx.setPhase("R2", layout.PhaseRollback); err != nil {
			return res, fmt.Errorf("rollback: %w", err)
		}
	case layout.PhaseRollback:
	default:
		return res, fmt.Errorf("rollback: commit already began (phase %q): it can only be finished", tx.j.Phase)
	}
	res.Lost = tx.j.Lost
	err := tx.putBack()
	res.Garbage = tx.garbage
	if err != nil {
		return res, fmt.Errorf("rollback: %w", err)
	}
	if len(res.Lost) > 0 {
		res.Kept = n.Path(n.Failed(tx.j.ID))
		return res, &LostContentError{Dir: n.Dir, Paths: res.Lost, Kept: res.Kept}
	}
	return res, nil
}

// decideRollback makes the journal of a running transaction say rollback
// (R1, R2) and releases the lock, leaving the rest to recovery.
func (tx *Tx) decideRollback() error {
	defer tx.close()
	if tx.j.Phase != layout.PhaseRunning {
		return nil
	}
	if err := tx.expectShadowAt(tx.n.Complete); err != nil {
		return fmt.Errorf("rollback: %w", err)
	}
	tx.stopWatch()
	lost, err := tx.changed(tx.n.Complete)
	if err != nil {
		return fmt.Errorf("rollback: %w", err)
	}
	tx.j.Lost = lost
	if err := tx.setPhase("R2", layout.PhaseRollback); err != nil {
		return fmt.Errorf("rollback: %w", err)
	}
	return nil
}

// endUnchanged ends the rollback of a directory the command left as it
// found it (unchanged): the linked files' metadata is restored in place
// (R3), made durable (C1), and the transaction ends as a commit does (C3 on),
// the shadow dropped, with no exchange. Until C3 a crash rolls back as
// usual; after, recovery finishes the commit, which keeps the directory as
// it is: as it was.
func (tx *Tx) endUnchanged(res *Result) (*Result, error) {
	n := tx.n
	tx.log.Debug("the command changed nothing: no exchange", "dir", n.Dir)
	if err := tx.restore(n.Complete); err != nil {
		return res, fmt.Errorf("rollback: %w", err)
	}
	tx.step("C1", "syncfs", n.Parent)
	if err := tx.fs.Syncfs(tx.pfd); err != nil {
		return res, fmt.Errorf("rollback: make restored metadata durable: syncfs %s: %w", n.Parent, err)
	}
	if err := tx.setPhase("C3", layout.PhaseCommit); err != nil {
		return res, fmt.Errorf("rollback: %w", err)
	}
	res.Unchanged = true
	err := tx.discard()
	res.Garbage = tx.garbage
	if err != nil {
		return res, fmt.Errorf("rollback: drop shadow: %w", err)
	}
	return res, nil
}

// putBack finishes a rollback whose journal is durable: restore the linked
// files' metadata, exchange the shadow and the directory, make both durable,
// name the failed tree for removal (or keep it), end the transaction. Every
// step checks where the shadow is by its inode, so putBack resumes at any
// point a crash left.
func (tx *Tx) putBack() error {
	n := tx.n
	swapped, err := tx.shadowInstalled()
	if err != nil {
		return err
	}
	failedName := n.Removing(tx.j.ID)
	if len(tx.j.Lost) > 0 {
		failedName = n.Failed(tx.j.ID)
	}
	// Rows 10 and 13 (the shadow not installed yet): R3 on it, then R4;
	// row 11 (installed): R3 again on the directory.
	if !swapped {
		if err := tx.restore(n.Complete); err != nil {
			return err
		}
		if err := tx.swap(failedName); err != nil {
			return err
		}
	} else if err := tx.restore(n.Base); err != nil {
		return err
	}
	// Step: the restored metadata and the exchange are durable before the
	// failed tree is renamed and the journal removed.
	tx.step("R5", "syncfs", n.Parent)
	if err := tx.fs.Syncfs(tx.pfd); err != nil {
		return fmt.Errorf("make rollback durable: syncfs %s: %w", n.Parent, err)
	}
	// After the exchange, the name Complete holds the failed tree.
	var st unix.Stat_t
	err = unix.Fstatat(tx.pfd, n.Complete, &st, unix.AT_SYMLINK_NOFOLLOW)
	switch {
	case err == nil:
		if tx.j.HoldsShadow(tx.pfd, n.Complete, &st) {
			return fmt.Errorf("%s still holds the shadow after the exchange", n.Path(n.Complete))
		}
		tx.step("R6", "rename", failedName)
		if err := tx.fs.Renameat2(tx.pfd, n.Complete, tx.pfd, failedName, unix.RENAME_NOREPLACE); err != nil {
			return fmt.Errorf("rename failed tree %s to %s: %w", n.Path(n.Complete), failedName, err)
		}
		if err := tx.fsyncParent("R6"); err != nil {
			return err
		}
	case !errors.Is(err, unix.ENOENT):
		return fmt.Errorf("stat %s: %w", n.Path(n.Complete), err)
	}
	return tx.finish() // R7: as C5..C8
}

// swap puts the shadow (at Complete) in place of the directory: one
// renameat2(RENAME_EXCHANGE) where the file system has it, so the directory's
// name never goes missing. Without it (EINVAL), the directory is renamed to
// failedName and the shadow to the directory's name. If the directory is
// gone, the shadow is renamed into its place.
func (tx *Tx) swap(failedName string) error {
	n := tx.n
	tx.step("R4", "exchange", n.Base)
	err := tx.fs.Renameat2(tx.pfd, n.Complete, tx.pfd, n.Base, unix.RENAME_EXCHANGE)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.ENOENT):
		// The command removed the directory itself.
	case errors.Is(err, unix.EINVAL):
		tx.step("R4", "rename", failedName)
		if err := tx.fs.Renameat2(tx.pfd, n.Base, tx.pfd, failedName, unix.RENAME_NOREPLACE); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("rename %s to %s: %w", n.Dir, failedName, err)
		}
		if err := tx.fsyncParent("R4"); err != nil {
			return err
		}
	default:
		return fmt.Errorf("exchange %s and %s: %w", n.Path(n.Complete), n.Dir, err)
	}
	tx.step("R4", "rename", n.Base)
	if err := tx.fs.Renameat2(tx.pfd, n.Complete, tx.pfd, n.Base, unix.RENAME_NOREPLACE); err != nil {
		return fmt.Errorf("rename %s to %s: %w", n.Path(n.Complete), n.Dir, err)
	}
	return nil
}

// shadowInstalled reports whether the directory's name holds the shadow
// (true) or the name Complete does (false); anything else is an error.
func (tx *Tx) shadowInstalled() (bool, error) {
	var st unix.Stat_t
	if err := unix.Fstatat(tx.pfd, tx.n.Base, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil && tx.j.HoldsShadow(tx.pfd, tx.n.Base, &st) {
		return true, tx.isShadow(tx.n.Base, &st)
	}
	if err := tx.expectShadowAt(tx.n.Complete); err != nil {
		return false, err
	}
	return false, nil
}

// expectShadowAt checks that name holds the journal's shadow.
func (tx *Tx) expectShadowAt(name string) error {
	return tx.j.ShadowAt(tx.pfd, name, tx.n.Path(name))
}

// stopWatch ends the file-system watch, if there is one, and keeps the
// inodes it saw touched as the only ones to check. Events are queued before
// the system call that causes them returns, so the watch has seen all that
// the command did once it has exited. Without a complete list, every linked
// file is checked.
func (tx *Tx) stopWatch() {
	if tx.watch == nil {
		return
	}
	inos, err := tx.watch.Stop()
	tx.watch = nil
	if err != nil {
		tx.log.Debug("file-system watch incomplete: every linked file is checked", "err", err)
		return
	}
	tx.touched, tx.all = inos, false
	tx.log.Debug("file-system watch", "files touched", len(inos))
}

// records opens the manifest and returns the records to check: every one,
// or those of the files the watch saw touched. The caller closes f.
func (tx *Tx) records() (f *os.File, recs snapshot.Records, err error) {
	path := tx.n.Path(tx.n.Meta)
	fd, _, err := safeopen.OpenAt(tx.pfd, tx.n.Meta, path, unix.O_RDONLY, 0, safeopen.Regular, tx.j.ManifestRules())
	if err != nil {
		return nil, nil, fmt.Errorf("open manifest: %w", err)
	}
	f = os.NewFile(uintptr(fd), path)
	if tx.all {
		return f, snapshot.AllRecords(f), nil
	}
	return f, snapshot.RecordsOf(f, tx.index, tx.touched), nil
}

// changed lists the linked files of the shadow at name written in place
// (none for a snapshot, which shares nothing).
func (tx *Tx) changed(name string) ([]string, error) {
	if tx.j.IsSnapshot() {
		return nil, nil
	}
	rootfd, err := tx.openShadow(name)
	if err != nil {
		return nil, err
	}
	defer unix.Close(rootfd)
	f, recs, err := tx.records()
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return nil, fmt.Errorf("stat manifest: %w", err)
	}
	return snapshot.Changed(rootfd, tx.n.Path(name), tx.counted(ProgressCheck, recs), st.Mtim)
}

// openShadow opens the shadow at name, without following a symlink, and
// checks it is the journal's.
func (tx *Tx) openShadow(name string) (int, error) {
	p := tx.n.Path(name)
	fd, st, err := safeopen.OpenAt(tx.pfd, name, p, unix.O_RDONLY, 0, safeopen.Directory, safeopen.Rules{})
	if err != nil {
		return -1, fmt.Errorf("shadow: %w", err)
	}
	if err := tx.isShadow(name, st); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// isShadow checks that st, the entry name in the parent, is the journal's
// shadow.
func (tx *Tx) isShadow(name string, st *unix.Stat_t) error {
	return tx.j.IsShadow(tx.pfd, name, tx.n.Path(name), st)
}

// restore gives the linked files of the shadow at name (Complete, or the
// directory's own name once it is installed) their recorded metadata
// (nothing for a snapshot, which holds its own).
func (tx *Tx) restore(name string) error {
	if tx.j.IsSnapshot() {
		return nil
	}
	rootfd, err := tx.openShadow(name)
	if err != nil {
		return err
	}
	defer unix.Close(rootfd)
	root := tx.n.Path(name)
	f, recs, err := tx.records()
	if err != nil {
		return err
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return fmt.Errorf("stat manifest: %w", err)
	}
	tx.step("R3", "restore metadata", root)
	restored, skipped, err := snapshot.Restore(rootfd, root, tx.counted(ProgressRestore, recs), st.Mtim, tx.fs)
	if err != nil {
		return err
	}
	tx.log.Debug("metadata restored", "files", restored, "skipped", skipped)
	return nil
}

// Finish finishes the transaction a crash left on the directory described
// by n, whose journal is j (as layout.ReadJournal read it), under an
// exclusive lock on n.Lock that the caller holds, and releases once Finish
// returns: it commits if j's phase is layout.PhaseCommit (rows 14 and 15 of
// the crash-state table), and rolls back otherwise (rows 5 to 8, 10 to 13).
//
// When this process is root and the journal another user's, every step is
// taken with that user's file-system identity and no capabilities (package
// internal/creds): a forged journal can do no more than its owner could.
//
// fs performs every mutation (nil: the kernel's own calls); progress, if
// set, reports the long phases.
func Finish(n layout.Names, j *layout.Journal, fs fsys.FS, progress Progress) (*Result, error) {
	return finishAs(n, j, false, fs, progress)
}

// FinishCommitted is Finish for a tree of a group whose record says commit
// (row 29): a journal still in phase running is first made to say commit
// (C3, durably), then the commit is finished; any other phase is finished
// as Finish does. Called on every other tree of the group before the
// record's own.
func FinishCommitted(n layout.Names, j *layout.Journal, fs fsys.FS, progress Progress) (*Result, error) {
	return finishAs(n, j, true, fs, progress)
}

// finishAs is Finish; commitRunning commits a journal in phase running.
func finishAs(n layout.Names, j *layout.Journal, commitRunning bool, fs fsys.FS, progress Progress) (*Result, error) {
	as := creds.For(j.Owner)
	tx := newTx(n, nil, fs, nil)
	tx.j, tx.progress = *j, progress
	tx.enter = creds.Worker(as)
	var err error
	if tx.pfd, err = n.OpenParent(); err != nil {
		tx.close()
		return nil, err
	}
	var res *Result
	err = creds.Do(as, func() (err error) {
		if commitRunning && j.Phase == layout.PhaseRunning {
			// Row 29: the group committed; this tree's journal says so
			// before its shadow goes.
			if err := tx.setPhase("C3", layout.PhaseCommit); err != nil {
				return fmt.Errorf("commit: %w", err)
			}
		}
		if tx.j.Phase == layout.PhaseCommit {
			res, err = tx.Commit()
		} else {
			res, err = tx.Rollback()
		}
		return err
	})
	if !tx.done {
		// creds.Do failed before Commit or Rollback ran.
		tx.close()
	}
	return res, err
}
