package snapshot

import (
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/fsys"
	"github.com/treetx/treetx/internal/safeopen"
)

// Remove deletes the tree name in the directory parent (a path), with
// unlinkat relative to open directory descriptors, several directories at
// once (GOMAXPROCS goroutines), each directory after everything in it. It
// never follows a symlink: a symlink is removed as itself. A directory
// whose owner lacks read, write or search permission is given them where
// an operation in it is refused (EACCES); nothing is looked at otherwise. A
// missing name is not an error, nor is an entry that disappears meanwhile
// (another Remove of the same tree). Remove is idempotent; a crash leaves
// part of the tree, which a later Remove finishes. A tree that is a btrfs
// subvolume goes with one subvolume deletion where this process may do it
// (see removeSubvolume).
func Remove(parent, name string, fs FS) error {
	return RemoveWith(parent, name, RemoveOptions{FS: fs})
}

// RemoveOptions configures RemoveWith.
type RemoveOptions struct {
	// FS performs every mutation; nil means the kernel's own calls.
	FS FS
	// Enter, if set, is called first by every goroutine that deletes (to
	// delete with another user's identity: internal/creds.Worker).
	Enter func() error
	// Progress, if set, is called with the number of entries deleted so
	// far, about every 10,000 (from the deleting goroutines, one call at a
	// time).
	Progress func(entries int64)
}

// RemoveWith is Remove with options.
func RemoveWith(parent, name string, opts RemoveOptions) error {
	fs, enter := opts.FS, opts.Enter
	if fs == nil {
		fs = fsys.OS{}
	}
	pfd, err := safeopen.OpenDir(parent)
	if err != nil {
		return fmt.Errorf("remove: %w", err)
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
	if removeSubvolume(fs, pfd, name, &st, enter) {
		return nil
	}
	r := &remover{fs: fs, pfd: pfd, name: name, root: full, progress: opts.Progress}
	open := func() (err error) { r.rootFd, err = openDir(pfd, name); return err }
	if err := r.retry(open(), pfd, name, full, open); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("remove: open %s: %w", full, err)
	}
	defer unix.Close(r.rootFd)
	r.pool = &pool{list: r.list, post: r.post, enter: enter}
	// More goroutines than cores: a removal waits on the disk (freeing a
	// directory's blocks, discarding them on a file system mounted with
	// -o discard) more than it computes.
	return r.pool.run(removeWorkers * runtime.GOMAXPROCS(0))
}

// removeWorkers is how many directories Remove works on per core.
const removeWorkers = 4

type remover struct {
	progress func(entries int64)
	done     atomic.Int64
	mu       sync.Mutex // serializes progress
	fs       fsys.FS
	pool     *pool
	pfd      int    // the parent, open
	name     string // the tree's name in the parent
	root     string // the tree's path
	rootFd   int    // the tree, open
}

// searchable gives directory name in dirfd its owner's read, write and
// search permission, so that its entries can go, and reports whether it
// lacked any. It is called only where an operation met EACCES: as root, or
// on a tree its owner may write, never.
func (r *remover) searchable(dirfd int, name, full string) (bool, error) {
	var st unix.Stat_t
	if err := lstatAt(dirfd, name, &st); err != nil {
		return false, fmt.Errorf("remove: stat %s: %w", full, err)
	}
	if st.Mode&0o700 == 0o700 {
		return false, nil
	}
	if err := r.fs.Fchmodat(dirfd, name, st.Mode&07777|0o700); err != nil {
		return false, fmt.Errorf("remove: chmod %s: %w", full, err)
	}
	return true, nil
}

// retry runs op again if err is EACCES and directory name in dirfd lacked
// a permission its owner can give back.
func (r *remover) retry(err error, dirfd int, name, full string, op func() error) error {
	if !errors.Is(err, unix.EACCES) {
		return err
	}
	fixed, ferr := r.searchable(dirfd, name, full)
	if ferr != nil {
		return errors.Join(err, ferr)
	}
	if !fixed {
		return err
	}
	return op()
}

// list unlinks every entry of directory n but its subdirectories, which it
// queues.
func (r *remover) list(w *worker, n *dirNode) error {
	full := filepath.Join(r.root, n.rel)
	var fd int
	open := func() (err error) { fd, err = safeopen.OpenDirBeneath(r.rootFd, n.rel, full); return err }
	err := open()
	if errors.Is(err, unix.EACCES) {
		err = r.retryAt(err, n.rel, open)
	}
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("remove: open %s: %w", full, err)
	}
	defer unix.Close(fd)
	ents, err := readDir(fd, w.scratch)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("remove: read directory %s: %w", full, err)
	}
	for _, e := range ents {
		if e.typ == os.ModeDir {
			crel := e.name
			if n.rel != "" {
				crel = n.rel + "/" + e.name
			}
			r.pool.add(n, crel)
			continue
		}
		err := r.fs.Unlinkat(fd, e.name, 0)
		if errors.Is(err, unix.EACCES) { // the closure only where needed
			err = r.retry(err, fd, ".", full, func() error { return r.fs.Unlinkat(fd, e.name, 0) })
		}
		if err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("remove %s: %w", filepath.Join(full, e.name), err)
		}
		r.count()
	}
	return nil
}

// count counts an entry deleted, and reports progress every 10,000.
func (r *remover) count() {
	if d := r.done.Add(1); r.progress != nil && d%10000 == 0 {
		r.mu.Lock()
		r.progress(d)
		r.mu.Unlock()
	}
}

// post removes directory n, now empty.
func (r *remover) post(n *dirNode) error {
	if n.parent == nil {
		// The tree's own parent is not the tree's to change.
		err := r.fs.Unlinkat(r.pfd, r.name, unix.AT_REMOVEDIR)
		if err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("remove %s: %w", r.root, err)
		}
		return nil
	}
	full := filepath.Join(r.root, n.rel)
	dirfd, name, err := r.parentOf(n.rel, full)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("remove %s: %w", full, err)
	}
	defer r.closeParent(dirfd)
	rmdir := func() error { return r.fs.Unlinkat(dirfd, name, unix.AT_REMOVEDIR) }
	err = rmdir()
	if errors.Is(err, unix.EACCES) {
		err = r.retry(err, dirfd, ".", filepath.Join(r.root, n.parent.rel), rmdir)
	}
	if err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("remove %s: %w", full, err)
	}
	return nil
}

// parentOf opens the directory holding rel (relative to the tree, not "")
// beneath the tree without following a symlink, and returns it with rel's
// base name; the tree's root itself is not opened again. Close it with
// closeParent.
func (r *remover) parentOf(rel, full string) (int, string, error) {
	dir, base := path.Split(rel)
	if dir == "" {
		return r.rootFd, base, nil
	}
	fd, err := safeopen.OpenDirBeneath(r.rootFd, strings.TrimSuffix(dir, "/"), full)
	return fd, base, err
}

func (r *remover) closeParent(fd int) {
	if fd != r.rootFd {
		unix.Close(fd)
	}
}

// retryAt is retry for the directory rel of the tree ("" for its root),
// reached beneath it.
func (r *remover) retryAt(err error, rel string, op func() error) error {
	full := filepath.Join(r.root, rel)
	if rel == "" {
		return r.retry(err, r.rootFd, ".", full, op)
	}
	dirfd, name, perr := r.parentOf(rel, full)
	if perr != nil {
		return errors.Join(err, perr)
	}
	defer r.closeParent(dirfd)
	return r.retry(err, dirfd, name, full, op)
}
