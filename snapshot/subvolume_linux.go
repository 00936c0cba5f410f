package snapshot

import (
	"errors"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/btrfs"
	"github.com/treetx/treetx/internal/fsys"
)

// removeSubvolume deletes the tree name in the parent pfd, whose root st
// describes, with one subvolume deletion when it is the root of a btrfs
// subvolume (a snapshot shadow, or the failed tree it replaced), and
// reports whether that was done. The deletion is taken with enter's
// identity when enter is set (on a goroutine of its own, locked to a
// thread that is then discarded). Where it fails, RemoveWith deletes the
// tree entry by entry (its last step, rmdir of the emptied subvolume,
// deletes it): when this identity may not delete a subvolume that is not
// empty (not root, no user_subvol_rm_allowed: btrfs.ErrNotEmpty), or when
// the subvolume holds others (ENOTEMPTY: a failed command made them; the
// walk deletes each once emptied).
func removeSubvolume(fs fsys.FS, pfd int, name string, st *unix.Stat_t, enter func() error) bool {
	if st.Ino != btrfs.FirstFreeObjectID {
		return false
	}
	if root, err := btrfs.IsSubvolumeRootAt(pfd, name); err != nil || !root {
		return false
	}
	del := func() error { return btrfs.Via(fs).DeleteSubvolume(pfd, name) }
	var err error
	if enter == nil {
		err = del()
	} else {
		done := make(chan error, 1)
		go func() {
			if err := enter(); err != nil {
				done <- err
				return
			}
			done <- del()
		}()
		err = <-done
	}
	// Anything else (not allowed: btrfs.ErrNotEmpty; nested subvolumes:
	// ENOTEMPTY; the default subvolume, one being sent...): the walk, whose
	// error, if it fails too, names the entry.
	return err == nil || errors.Is(err, unix.ENOENT)
}
