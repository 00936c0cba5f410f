package snapshot

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/fsys"
)

// Build fills the existing, empty directory dstName in dstParent (a
// directory descriptor) with the shadow of the tree at src, then gives it the
// mode, owner and times of src. Directories are processed by opts.Workers
// goroutines at once, each working relative to open directory descriptors; a
// directory gets its metadata once all of its entries are made. On error the
// partial shadow is left for the caller to remove.
func Build(src string, dstParent int, dstName string, opts Options) (*Stats, error) {
	if opts.FS == nil {
		opts.FS = fsys.OS{}
	}
	if opts.Manifest == nil {
		return nil, errors.New("snapshot: no manifest writer")
	}
	b := &builder{opts: opts, fs: opts.FS, src: src, dstParent: dstParent, dstName: dstName, stats: &Stats{}}
	var err error
	if b.srcRoot, err = openDir(unix.AT_FDCWD, src); err != nil {
		return nil, fmt.Errorf("snapshot: open %s: %w", src, err)
	}
	defer unix.Close(b.srcRoot)
	if b.dstRoot, err = openDir(dstParent, dstName); err != nil {
		return nil, fmt.Errorf("snapshot: open shadow %s: %w", dstName, err)
	}
	defer unix.Close(b.dstRoot)
	b.pool = &pool{list: b.list, post: b.post}
	err = b.pool.run(opts.Workers)
	b.stats.Dirs, b.stats.Links, b.stats.Copies, b.stats.Symlinks = b.dirs.Load(), b.links.Load(), b.copies.Load(), b.symlinks.Load()
	return b.stats, err
}

type builder struct {
	opts      Options
	fs        fsys.FS
	pool      *pool
	src       string
	srcRoot   int // src, open
	dstRoot   int // the shadow's root, open
	dstParent int
	dstName   string

	mu    sync.Mutex // guards stats.Excluded and Progress calls
	stats *Stats

	manifest                      sync.Mutex // serializes opts.Manifest
	done                          atomic.Int64
	dirs, links, copies, symlinks atomic.Int64
}

func openDir(dirfd int, name string) (int, error) {
	for {
		fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != unix.EINTR {
			return fd, err
		}
	}
}

func lstatAt(dirfd int, name string, st *unix.Stat_t) error {
	for {
		err := unix.Fstatat(dirfd, name, st, unix.AT_SYMLINK_NOFOLLOW)
		if err != unix.EINTR {
			return err
		}
	}
}

// dotIfEmpty names the root as "." for the *at calls.
func dotIfEmpty(rel string) string {
	if rel == "" {
		return "."
	}
	return rel
}

// list makes the shadow of every entry of directory n, creating and
// queueing its subdirectories.
func (b *builder) list(w *worker, n *dirNode) error {
	if ctx := b.opts.Context; ctx != nil && ctx.Err() != nil {
		return fmt.Errorf("snapshot: %w", context.Cause(ctx))
	}
	srcPath := filepath.Join(b.src, n.rel)
	srcFd, err := openDir(b.srcRoot, dotIfEmpty(n.rel))
	if err != nil {
		return fmt.Errorf("snapshot: open %s: %w", srcPath, err)
	}
	defer unix.Close(srcFd)
	dstFd, err := openDir(b.dstRoot, dotIfEmpty(n.rel))
	if err != nil {
		return fmt.Errorf("snapshot: open shadow of %s: %w", srcPath, err)
	}
	defer unix.Close(dstFd)
	if err := unix.Fstat(srcFd, &n.st); err != nil {
		return fmt.Errorf("snapshot: stat %s: %w", srcPath, err)
	}
	if n.want, err = w.xbuf.ofFd(srcFd); err == nil {
		n.have, err = w.xbuf.ofFd(dstFd)
	}
	if err != nil {
		return fmt.Errorf("snapshot: extended attributes of %s: %w", srcPath, err)
	}
	ents, err := readDir(srcFd, w.scratch)
	if err != nil {
		return fmt.Errorf("snapshot: read directory %s: %w", srcPath, err)
	}
	for _, e := range ents {
		crel := e.name
		if n.rel != "" {
			crel = n.rel + "/" + e.name
		}
		if b.opts.Refuse.Match(crel) {
			return fmt.Errorf("snapshot: %s: %w", filepath.Join(srcPath, e.name), ErrRefusedEntry)
		}
		if b.opts.Exclude.Match(crel) {
			b.mu.Lock()
			b.stats.Excluded = append(b.stats.Excluded, crel)
			b.mu.Unlock()
			continue
		}
		if e.typ == os.ModeDir {
			if err := b.fs.Mkdirat(dstFd, e.name, 0o700); err != nil {
				return fmt.Errorf("snapshot: mkdir shadow of %s: %w", filepath.Join(srcPath, e.name), err)
			}
			b.pool.add(n, crel)
		} else if err := b.entry(w, srcPath, srcFd, dstFd, e, crel); err != nil {
			return err
		}
		if d := b.done.Add(1); b.opts.Progress != nil && d%10000 == 0 {
			b.mu.Lock()
			b.opts.Progress(d)
			b.mu.Unlock()
		}
	}
	return b.flushRecords(w)
}

// post gives directory n's shadow its metadata, once every entry below it
// is made (the last change to the directory, so its times stick).
func (b *builder) post(n *dirNode) error {
	dirfd, name := b.dstRoot, n.rel
	if n.parent == nil {
		dirfd, name = b.dstParent, b.dstName
	} else {
		b.dirs.Add(1)
	}
	if err := b.setMeta(dirfd, name, &n.st, n.want, n.have); err != nil {
		return fmt.Errorf("snapshot: shadow of %s: %w", filepath.Join(b.src, n.rel), err)
	}
	n.want, n.have = nil, nil
	return nil
}

// entry makes the shadow of one entry that is not a directory.
func (b *builder) entry(w *worker, srcPath string, srcFd, dstFd int, e dirent, rel string) error {
	if e.typ == os.ModeSymlink {
		return b.symlink(w, filepath.Join(srcPath, e.name), srcFd, dstFd, e.name)
	}
	if e.typ == 0 && b.opts.Copy.Match(rel) {
		if err := b.copyFile(w, srcFd, dstFd, e.name); err != nil {
			return fmt.Errorf("snapshot: copy %s: %w", filepath.Join(srcPath, e.name), err)
		}
		b.copies.Add(1)
		return nil
	}
	// The link loop: the entry's full path is made only for an error or a
	// file with extended attributes.
	var st unix.Stat_t
	if err := lstatAt(srcFd, e.name, &st); err != nil {
		return fmt.Errorf("snapshot: stat %s: %w", filepath.Join(srcPath, e.name), err)
	}
	if err := b.fs.Linkat(srcFd, e.name, dstFd, e.name); err != nil {
		full := filepath.Join(srcPath, e.name)
		if errors.Is(err, unix.EMLINK) {
			return fmt.Errorf("snapshot: link %s: %w (the file system's limit on links to one file; exclude it or list it with --copy)", full, err)
		}
		return fmt.Errorf("snapshot: link %s: %w", full, err)
	}
	b.links.Add(1)
	rec := recordOf(rel, &st)
	var err error
	if rec.Xattrs, err = w.xbuf.ofAt(srcFd, srcPath, e.name); err != nil {
		return fmt.Errorf("snapshot: extended attributes of %s: %w", filepath.Join(srcPath, e.name), err)
	}
	w.records = append(w.records, rec)
	return nil
}

// symlink recreates the symlink name (at full) of srcFd in dstFd.
func (b *builder) symlink(w *worker, full string, srcFd, dstFd int, name string) error {
	var st unix.Stat_t
	target, err := readlinkAt(srcFd, name)
	if err != nil {
		return fmt.Errorf("snapshot: readlink %s: %w", full, err)
	}
	if err := lstatAt(srcFd, name, &st); err != nil {
		return fmt.Errorf("snapshot: stat %s: %w", full, err)
	}
	want, err := w.xbuf.ofPath(full)
	if err != nil {
		return fmt.Errorf("snapshot: extended attributes of %s: %w", full, err)
	}
	if err := b.fs.Symlinkat(target, dstFd, name); err != nil {
		return fmt.Errorf("snapshot: symlink shadow of %s: %w", full, err)
	}
	b.symlinks.Add(1)
	if err := b.setMeta(dstFd, name, &st, want, nil); err != nil {
		return fmt.Errorf("snapshot: shadow of %s: %w", full, err)
	}
	return nil
}

// flushRecords writes the records of the directory just listed to the
// manifest, together, so that each directory's records are contiguous.
func (b *builder) flushRecords(w *worker) error {
	if len(w.records) == 0 {
		return nil
	}
	b.manifest.Lock()
	defer b.manifest.Unlock()
	for _, r := range w.records {
		if err := b.opts.Manifest.Add(r); err != nil {
			return fmt.Errorf("snapshot: write manifest: %w", err)
		}
	}
	w.records = w.records[:0]
	return nil
}

// setMeta gives name in dirfd the owner, extended attributes (want, replacing
// have), mode (not for symlinks) and times of st. Owner first: chown clears
// the setuid and setgid bits; mode after the attributes: setting an access
// ACL changes the mode.
func (b *builder) setMeta(dirfd int, name string, st *unix.Stat_t, want, have []Xattr) error {
	if err := b.fs.Lchownat(dirfd, name, int(st.Uid), int(st.Gid)); err != nil {
		if !errors.Is(err, unix.EPERM) {
			return fmt.Errorf("chown: %w", err)
		}
		if !b.opts.AllowOwnerChange {
			return fmt.Errorf("owner uid %d gid %d: %w (run treetx as root or as the owner, or allow it with --allow-owner-change)", st.Uid, st.Gid, ErrOwner)
		}
	}
	if err := syncXattrs(b.fs, dirfd, name, have, want); err != nil {
		return fmt.Errorf("extended attributes: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFLNK {
		if err := b.fs.Fchmodat(dirfd, name, st.Mode&07777); err != nil {
			return fmt.Errorf("chmod: %w", err)
		}
	}
	if err := b.fs.Lutimesat(dirfd, name, st.Atim, st.Mtim); err != nil {
		return fmt.Errorf("set times: %w", err)
	}
	return nil
}

// copyFile makes name in dstFd a real copy of name in srcFd, with its mode,
// owner, extended attributes and times.
func (b *builder) copyFile(w *worker, srcFd, dstFd int, name string) error {
	in, err := unix.Openat(srcFd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(in)
	var st unix.Stat_t
	if err := unix.Fstat(in, &st); err != nil {
		return err
	}
	out, err := b.fs.Create(dstFd, name, 0o600)
	if err != nil {
		return err
	}
	defer unix.Close(out)
	if w.copyBuf == nil {
		w.copyBuf = make([]byte, 256<<10)
	}
	for {
		n, err := unix.Read(in, w.copyBuf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			break
		}
		if err := b.fs.Write(out, w.copyBuf[:n]); err != nil {
			return err
		}
	}
	want, err := w.xbuf.ofFd(in)
	if err != nil {
		return err
	}
	have, err := w.xbuf.ofFd(out)
	if err != nil {
		return err
	}
	return b.setMeta(dstFd, name, &st, want, have)
}

func readlinkAt(dirfd int, name string) (string, error) {
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		n, err := unix.Readlinkat(dirfd, name, buf)
		if err == unix.EINTR {
			size /= 2
			continue
		}
		if err != nil {
			return "", err
		}
		if n < size {
			return string(buf[:n]), nil
		}
	}
}

// joinRel joins a relative slash path to a root directory path.
func joinRel(root, rel string) string {
	return filepath.Join(root, filepath.FromSlash(path.Clean(rel)))
}
