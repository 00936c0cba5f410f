package protocol

import (
	"errors"
	"fmt"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/fsys"
	"github.com/treetx/treetx/internal/layout"
	"github.com/treetx/treetx/internal/safeopen"
	"github.com/treetx/treetx/snapshot"
)

// The end of a transaction: C4 (drop the shadow) and C5..C8, which a
// rollback ends with too (R7).

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
	if tx.j.ID != "" && !tx.j.IsSnapshot() {
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
		if tx.n.Classify(name) != layout.KindRemoving {
			continue
		}
		own := name == tx.n.Removing(tx.j.ID)
		if tx.deferRm && (own || tx.enter == nil && tx.n.DeleteAs(tx.pfd, name) == nil) {
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
		errs = append(errs, tx.n.RemoveTree(tx.fs, tx.pfd, name, tx.enter, tx.progress.Of(ProgressRemove, 0)))
	}
	return errors.Join(errs...)
}

// removeOptions are the options the transaction's own trees are deleted
// with.
func (tx *Tx) removeOptions() snapshot.RemoveOptions {
	return snapshot.RemoveOptions{FS: tx.fs, Enter: tx.enter, Progress: tx.progress.Of(ProgressRemove, 0)}
}

// RemoveGarbage deletes trees that transactions named for removal
// (Result.Garbage): each path must be a ".#treetx.NAME.removing.ID" name, or
// it is refused. It takes no lock: such trees belong to no transaction.
// Several RemoveGarbage calls on one tree may run at once.
func RemoveGarbage(paths []string, fs fsys.FS) error {
	var errs []error
	for _, p := range paths {
		if _, kind, _ := layout.ParseName(filepath.Base(p)); kind != layout.KindRemoving {
			errs = append(errs, fmt.Errorf("%s: not a tree named for removal; left alone", p))
			continue
		}
		errs = append(errs, snapshot.Remove(filepath.Dir(p), filepath.Base(p), fs))
	}
	return errors.Join(errs...)
}
