package snapshot

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/fsys"
)

// Remove deletes the tree name in the directory parent (a path), with
// unlinkat relative to open directory descriptors, several directories at
// once (GOMAXPROCS goroutines), each directory after everything in it. It
// never follows a symlink: a symlink is removed as itself. A directory
// without write or search permission for its owner is given them first. A
// missing name is not an error, nor is an entry that disappears meanwhile
// (another Remove of the same tree). Remove is idempotent; a crash leaves
// part of the tree, which a later Remove finishes.
func Remove(parent, name string, fs fsys.FS) error {
	if fs == nil {
		fs = fsys.OS{}
	}
	pfd, err := openDir(unix.AT_FDCWD, parent)
	if err != nil {
		return fmt.Errorf("remove: open %s: %w", parent, err)
	}
	defer unix.Close(pfd)
	full := filepath.Join(parent, name)
	var st unix.Stat_t
	if err := lstatAt(pfd, name, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("remove: stat %s: %w", full, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		if err := fs.Unlinkat(pfd, name, 0); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("remove %s: %w", full, err)
		}
		return nil
	}
	r := &remover{fs: fs, pfd: pfd, name: name, root: full}
	if err := r.searchable(pfd, name, &st); err != nil {
		return err
	}
	if r.rootFd, err = openDir(pfd, name); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("remove: open %s: %w", full, err)
	}
	defer unix.Close(r.rootFd)
	r.pool = &pool{list: r.list, post: r.post}
	return r.pool.run(0)
}

type remover struct {
	fs     fsys.FS
	pool   *pool
	pfd    int    // the parent, open
	name   string // the tree's name in the parent
	root   string // the tree's path
	rootFd int    // the tree, open
}

// searchable gives directory name in dirfd (whose metadata is st) owner
// write and search permission if it lacks them, so its entries can go.
func (r *remover) searchable(dirfd int, name string, st *unix.Stat_t) error {
	if st.Mode&0o300 == 0o300 {
		return nil
	}
	if err := r.fs.Fchmodat(dirfd, name, st.Mode&07777|0o700); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("remove: chmod %s: %w", filepath.Join(r.root, name), err)
	}
	return nil
}

// list unlinks every entry of directory n but its subdirectories, which it
// queues.
func (r *remover) list(w *worker, n *dirNode) error {
	full := filepath.Join(r.root, n.rel)
	fd, err := openDir(r.rootFd, dotIfEmpty(n.rel))
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("remove: open %s: %w", full, err)
	}
	defer unix.Close(fd)
	ents, err := readDir(full, w.scratch)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("remove: read directory %s: %w", full, err)
	}
	for _, e := range ents {
		crel := e.name
		if n.rel != "" {
			crel = n.rel + "/" + e.name
		}
		if e.typ == os.ModeDir {
			var st unix.Stat_t
			if err := lstatAt(fd, e.name, &st); err != nil {
				if errors.Is(err, unix.ENOENT) {
					continue
				}
				return fmt.Errorf("remove: stat %s: %w", filepath.Join(full, e.name), err)
			}
			if err := r.searchable(fd, e.name, &st); err != nil {
				return err
			}
			r.pool.add(n, crel)
			continue
		}
		if err := r.fs.Unlinkat(fd, e.name, 0); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("remove %s: %w", filepath.Join(full, e.name), err)
		}
	}
	return nil
}

// post removes directory n, now empty.
func (r *remover) post(n *dirNode) error {
	dirfd, name := r.rootFd, n.rel
	if n.parent == nil {
		dirfd, name = r.pfd, r.name
	}
	if err := r.fs.Unlinkat(dirfd, name, unix.AT_REMOVEDIR); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("remove %s: %w", filepath.Join(r.root, n.rel), err)
	}
	return nil
}
