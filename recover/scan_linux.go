package recover

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/layout"
	"github.com/treetx/treetx/internal/safeopen"
)

// Scan returns the directories under root, root included, that have
// something of treetx's beside them other than the lock file: a journal, a
// shadow, a tree being removed, a failed tree kept for inspection, a stale
// temporary file. They are absolute paths in a parent whose path holds no
// symlink, sorted; pass them to Recover or GC with Options.NoFollow.
//
// The walk does not follow symlinks (root itself is resolved), does not
// cross into other mounts (another file system, or a bind mount), and does
// not descend into names starting with ".#treetx." (shadows, trees being
// removed, failed trees: copies of a directory, whose own leftovers are not
// anyone's). Directories that vanish during the walk are skipped; any other
// error reading a directory is returned, joined with the others, along with
// the directories found elsewhere. Scan changes nothing.
func Scan(root string) ([]string, error) {
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, err
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return nil, fmt.Errorf("scan %s: %w", root, err)
	}
	fd, err := safeopen.OpenDir(real)
	if err != nil {
		return nil, fmt.Errorf("scan %s: %w", root, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("scan %s: %w", root, err)
	}
	s := &scanner{dev: uint64(st.Dev), mnt: mountID(fd), found: map[string]bool{}}
	if real != "/" {
		// root's own names live in its parent.
		if n, err := layout.NamesFor(real); err == nil {
			names, _ := n.ListParent()
			for _, name := range names {
				if k := n.Classify(name); k != layout.KindOther && k != layout.KindLock {
					s.found[real] = true
				}
			}
		}
	}
	s.walk(fd, real)
	dirs := make([]string, 0, len(s.found))
	for d := range s.found {
		dirs = append(dirs, d)
	}
	slices.Sort(dirs)
	return dirs, errors.Join(s.errs...)
}

type scanner struct {
	dev   uint64
	mnt   uint64 // the root's mount id (0 if unknown)
	found map[string]bool
	errs  []error
}

// walk lists the directory fd (at path), notes the directories whose names
// it holds, and descends into its subdirectories. It closes fd.
func (s *scanner) walk(fd int, path string) {
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	ents, err := f.ReadDir(-1)
	if err != nil {
		if !vanished(err) {
			s.errs = append(s.errs, fmt.Errorf("scan: read %s: %w", path, err))
		}
		return
	}
	for _, e := range ents {
		name := e.Name()
		if strings.HasPrefix(name, layout.Prefix) {
			if base, ok := leftoverBase(name); ok {
				s.found[filepath.Join(path, base)] = true
			}
			continue
		}
		if !e.IsDir() {
			continue // a symlink, even to a directory, is not followed
		}
		cfd, err := unix.Openat(fd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			if !vanished(err) {
				s.errs = append(s.errs, fmt.Errorf("scan: open %s: %w", filepath.Join(path, name), err))
			}
			continue
		}
		if !s.sameMount(cfd) {
			unix.Close(cfd)
			continue
		}
		s.walk(cfd, filepath.Join(path, name))
	}
}

// sameMount reports whether the directory fd is on the root's file system
// and is not the root of a mount (a bind mount has the same device). A
// btrfs subvolume, and what is in it, have a device number of their own,
// but are in the root's mount: its mount id says so.
func (s *scanner) sameMount(fd int) bool {
	var stx unix.Statx_t
	if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW, unix.STATX_TYPE|unix.STATX_INO, &stx); err != nil {
		return false
	}
	if unix.Mkdev(stx.Dev_major, stx.Dev_minor) != s.dev && (s.mnt == 0 || mountID(fd) != s.mnt) {
		return false
	}
	return stx.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT == 0 || stx.Attributes&unix.STATX_ATTR_MOUNT_ROOT == 0
}

// vanished reports whether err says that what was listed is gone (a live
// transaction renames and deletes trees while the walk goes on).
func vanished(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ELOOP)
}

// leftoverBase returns the base name of the directory that the name
// .#treetx.NAME.KIND belongs to, if it is one of treetx's names other than
// the lock file and the gate (which treetx leaves in place).
func leftoverBase(name string) (string, bool) {
	base, kind, _ := layout.ParseName(name)
	switch kind {
	case layout.KindOther, layout.KindLock, layout.KindGate:
		return "", false
	}
	return base, true
}
