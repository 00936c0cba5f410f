package layout

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/creds"
	"github.com/treetx/treetx/internal/fsys"
	"github.com/treetx/treetx/snapshot"
)

// Step is told of each mutation a function of this package makes for a
// step of the protocol, before it is made (what it does, and the name or
// path it acts on), so that the caller can log it under the step's ID. nil
// tells no one.
type Step func(what, name string)

func (s Step) tell(what, name string) {
	if s != nil {
		s(what, name)
	}
}

// NameForRemoval renames the tree name, one of n's names in the parent pfd,
// to a removal name (with id, or a new id if id is "" or that name is
// taken; four tries), and fsyncs the parent: a crash then leaves the tree
// whole under its old name, or under a name that says it is garbage, never
// half deleted under a name that means something else. It returns the
// removal name.
func (n Names) NameForRemoval(fs fsys.FS, pfd int, name, id string, step Step) (string, error) {
	for try := 0; ; try++ {
		if id == "" || try > 0 {
			var err error
			if id, err = NewID(); err != nil {
				return "", err
			}
		}
		target := n.Removing(id)
		step.tell("rename", target)
		err := fs.Renameat2(pfd, name, pfd, target, unix.RENAME_NOREPLACE)
		if err == nil {
			step.tell("fsync", n.Parent)
			if err := fs.Fsync(pfd); err != nil {
				return "", fmt.Errorf("fsync %s: %w", n.Parent, err)
			}
			return target, nil
		}
		if !errors.Is(err, unix.EEXIST) || try >= 3 {
			return "", fmt.Errorf("rename %s to %s: %w", n.Path(name), target, err)
		}
	}
}

// DropTree removes name, one of n's names in the parent pfd that no journal
// claims: anything but a directory is unlinked (only the name goes: unlinkat
// never follows a symlink); a directory is first named for removal
// (NameForRemoval, with id) unless its name already is one, then deleted
// (RemoveTree). A missing name is not an error. progress, if set, is told
// how many entries of the tree were deleted so far.
func (n Names) DropTree(fs fsys.FS, pfd int, name, id string, step Step, progress func(int64)) error {
	var st unix.Stat_t
	if err := unix.Fstatat(pfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("stat %s: %w", n.Path(name), err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		step.tell("unlink", name)
		if err := fs.Unlinkat(pfd, name, 0); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("remove %s: %w", n.Path(name), err)
		}
		return nil
	}
	if n.Classify(name) != KindRemoving {
		var err error
		if name, err = n.NameForRemoval(fs, pfd, name, id, step); err != nil {
			return err
		}
	}
	step.tell("remove tree", name)
	return n.RemoveTree(fs, pfd, name, nil, progress)
}

// RemoveTree deletes the tree name, one of n's names in the parent pfd,
// never following a symlink nor leaving its file system. enter, if not nil,
// is the identity to delete with (see internal/creds.Worker); else DeleteAs
// chooses it. progress, if set, is told how many entries were deleted so
// far.
func (n Names) RemoveTree(fs fsys.FS, pfd int, name string, enter func() error, progress func(int64)) error {
	if enter == nil {
		enter = n.DeleteAs(pfd, name)
	}
	return snapshot.RemoveWith(n.Parent, name, snapshot.RemoveOptions{FS: fs, Enter: enter, Progress: progress})
}

// DeleteAs returns the identity to delete the tree name, one of n's names in
// the parent pfd, with when no journal says whose it is: when this process
// is root and the tree's root is owned by neither root nor the owner of the
// directory n (to whom the shadows of root's transactions belong), that
// owner's (the tree may have been planted, and root then deletes no more of
// it than its planter could); nil, this process's own, otherwise.
func (n Names) DeleteAs(pfd int, name string) func() error {
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
