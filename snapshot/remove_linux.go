package snapshot

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/fsys"
)

// Remove deletes the tree name in the directory parent (a path), depth
// first, with unlinkat on directory descriptors. It never follows a symlink:
// a symlink is removed as itself. A directory without write or search
// permission for its owner is given them first. A missing name is not an
// error. Remove is idempotent; a crash leaves part of the tree, which a later
// Remove finishes.
func Remove(parent, name string, fs fsys.FS) error {
	if fs == nil {
		fs = fsys.OS{}
	}
	pfd, err := openDir(unix.AT_FDCWD, parent)
	if err != nil {
		return fmt.Errorf("remove: open %s: %w", parent, err)
	}
	defer unix.Close(pfd)
	r := &remover{fs: fs, scratch: newScratch()}
	var st unix.Stat_t
	if err := lstatAt(pfd, name, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("remove: stat %s: %w", filepath.Join(parent, name), err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		if err := fs.Unlinkat(pfd, name, 0); err != nil {
			return fmt.Errorf("remove %s: %w", filepath.Join(parent, name), err)
		}
		return nil
	}
	return r.dir(pfd, name, filepath.Join(parent, name), &st)
}

type remover struct {
	fs      fsys.FS
	scratch []byte
}

func (r *remover) dir(pfd int, name, full string, st *unix.Stat_t) error {
	if st.Mode&0o300 != 0o300 {
		if err := r.fs.Fchmodat(pfd, name, st.Mode&07777|0o700); err != nil {
			return fmt.Errorf("remove: chmod %s: %w", full, err)
		}
	}
	fd, err := openDir(pfd, name)
	if err != nil {
		return fmt.Errorf("remove: open %s: %w", full, err)
	}
	defer unix.Close(fd)
	ents, err := readDir(full, r.scratch)
	if err != nil {
		return fmt.Errorf("remove: read directory %s: %w", full, err)
	}
	for _, e := range ents {
		if e.typ == os.ModeDir {
			var cst unix.Stat_t
			if err := lstatAt(fd, e.name, &cst); err != nil {
				return fmt.Errorf("remove: stat %s: %w", filepath.Join(full, e.name), err)
			}
			if err := r.dir(fd, e.name, filepath.Join(full, e.name), &cst); err != nil {
				return err
			}
			continue
		}
		if err := r.fs.Unlinkat(fd, e.name, 0); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("remove %s: %w", filepath.Join(full, e.name), err)
		}
	}
	if err := r.fs.Unlinkat(pfd, name, unix.AT_REMOVEDIR); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("remove %s: %w", full, err)
	}
	return nil
}
