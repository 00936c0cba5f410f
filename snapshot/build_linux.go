package snapshot

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/fsys"
)

// Build fills the existing, empty directory dstName in dstParent (a
// directory descriptor) with the shadow of the tree at src, then gives it the
// mode, owner and times of src. On error the partial shadow is left for the
// caller to remove.
func Build(src string, dstParent int, dstName string, opts Options) (*Stats, error) {
	if opts.FS == nil {
		opts.FS = fsys.OS{}
	}
	if opts.Manifest == nil {
		return nil, errors.New("snapshot: no manifest writer")
	}
	b := &builder{opts: opts, fs: opts.FS, scratch: newScratch(), stats: &Stats{}}
	srcFd, err := openDir(unix.AT_FDCWD, src)
	if err != nil {
		return nil, fmt.Errorf("snapshot: open %s: %w", src, err)
	}
	defer unix.Close(srcFd)
	dstFd, err := openDir(dstParent, dstName)
	if err != nil {
		return nil, fmt.Errorf("snapshot: open shadow %s: %w", dstName, err)
	}
	defer unix.Close(dstFd)
	if err := b.dir(src, srcFd, dstFd, ""); err != nil {
		return b.stats, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(srcFd, &st); err != nil {
		return b.stats, fmt.Errorf("snapshot: stat %s: %w", src, err)
	}
	if err := b.setMeta(dstParent, dstName, &st, srcFd, dstFd, ""); err != nil {
		return b.stats, fmt.Errorf("snapshot: shadow root %s of %s: %w", dstName, src, err)
	}
	return b.stats, nil
}

type builder struct {
	opts    Options
	fs      fsys.FS
	scratch []byte
	copyBuf []byte
	xbuf    xattrBuf
	stats   *Stats
	done    int64
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

// dir fills dstFd with the shadow of the directory srcPath (open as srcFd);
// rel is its path relative to the root ("" for the root).
func (b *builder) dir(srcPath string, srcFd, dstFd int, rel string) error {
	if ctx := b.opts.Context; ctx != nil && ctx.Err() != nil {
		return fmt.Errorf("snapshot: %w", context.Cause(ctx))
	}
	ents, err := readDir(srcPath, b.scratch)
	if err != nil {
		return fmt.Errorf("snapshot: read directory %s: %w", srcPath, err)
	}
	for _, e := range ents {
		crel := e.name
		if rel != "" {
			crel = rel + "/" + e.name
		}
		if b.opts.Exclude.Match(crel) {
			b.stats.Excluded = append(b.stats.Excluded, crel)
			continue
		}
		if err := b.entry(srcPath, srcFd, dstFd, e, crel); err != nil {
			return err
		}
		if b.done++; b.opts.Progress != nil && b.done%10000 == 0 {
			b.opts.Progress(b.done)
		}
	}
	return nil
}

func (b *builder) entry(srcPath string, srcFd, dstFd int, e dirent, rel string) error {
	full := filepath.Join(srcPath, e.name)
	var st unix.Stat_t
	switch e.typ {
	case os.ModeDir:
		if err := b.fs.Mkdirat(dstFd, e.name, 0o700); err != nil {
			return fmt.Errorf("snapshot: mkdir shadow of %s: %w", full, err)
		}
		csrc, err := openDir(srcFd, e.name)
		if err != nil {
			return fmt.Errorf("snapshot: open %s: %w", full, err)
		}
		defer unix.Close(csrc)
		cdst, err := openDir(dstFd, e.name)
		if err != nil {
			return fmt.Errorf("snapshot: open shadow of %s: %w", full, err)
		}
		defer unix.Close(cdst)
		if err := b.dir(full, csrc, cdst, rel); err != nil {
			return err
		}
		if err := unix.Fstat(csrc, &st); err != nil {
			return fmt.Errorf("snapshot: stat %s: %w", full, err)
		}
		b.stats.Dirs++
		if err := b.setMeta(dstFd, e.name, &st, csrc, cdst, ""); err != nil {
			return fmt.Errorf("snapshot: shadow of %s: %w", full, err)
		}
		return nil
	case os.ModeSymlink:
		target, err := readlinkAt(srcFd, e.name)
		if err != nil {
			return fmt.Errorf("snapshot: readlink %s: %w", full, err)
		}
		if err := lstatAt(srcFd, e.name, &st); err != nil {
			return fmt.Errorf("snapshot: stat %s: %w", full, err)
		}
		if err := b.fs.Symlinkat(target, dstFd, e.name); err != nil {
			return fmt.Errorf("snapshot: symlink shadow of %s: %w", full, err)
		}
		b.stats.Symlinks++
		if err := b.setMeta(dstFd, e.name, &st, -1, -1, full); err != nil {
			return fmt.Errorf("snapshot: shadow of %s: %w", full, err)
		}
		return nil
	}
	if e.typ == 0 && b.opts.Copy.Match(rel) {
		if err := b.copyFile(srcFd, dstFd, e.name); err != nil {
			return fmt.Errorf("snapshot: copy %s: %w", full, err)
		}
		b.stats.Copies++
		return nil
	}
	if err := lstatAt(srcFd, e.name, &st); err != nil {
		return fmt.Errorf("snapshot: stat %s: %w", full, err)
	}
	var err error
	if err = b.fs.Linkat(srcFd, e.name, dstFd, e.name); err != nil {
		if errors.Is(err, unix.EMLINK) {
			return fmt.Errorf("snapshot: link %s: %w (the file system's limit on links to one file; exclude it or list it with --copy)", full, err)
		}
		return fmt.Errorf("snapshot: link %s: %w", full, err)
	}
	b.stats.Links++
	rec := recordOf(rel, &st)
	if rec.Xattrs, err = b.xbuf.ofPath(full); err != nil {
		return fmt.Errorf("snapshot: extended attributes of %s: %w", full, err)
	}
	if err := b.opts.Manifest.Add(rec); err != nil {
		return fmt.Errorf("snapshot: write manifest: %w", err)
	}
	return nil
}

// setMeta gives name in dirfd the owner, extended attributes, mode (not for
// symlinks) and times of st. The attributes are read from srcFd, or from
// srcPath (a symlink) when srcFd is negative; dstFd, if not negative, is name
// open, whose own attributes (a default ACL it inherited) are replaced. Owner
// first: chown clears the setuid and setgid bits; mode after the attributes:
// setting an access ACL changes the mode.
func (b *builder) setMeta(dirfd int, name string, st *unix.Stat_t, srcFd, dstFd int, srcPath string) error {
	if err := b.fs.Lchownat(dirfd, name, int(st.Uid), int(st.Gid)); err != nil && !errors.Is(err, unix.EPERM) {
		return fmt.Errorf("chown: %w", err)
	}
	var want, have []Xattr
	var err error
	if srcFd >= 0 {
		want, err = b.xbuf.ofFd(srcFd)
	} else {
		want, err = b.xbuf.ofPath(srcPath)
	}
	if err == nil && dstFd >= 0 {
		have, err = b.xbuf.ofFd(dstFd)
	}
	if err == nil {
		err = syncXattrs(b.fs, dirfd, name, have, want)
	}
	if err != nil {
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
// owner and times.
func (b *builder) copyFile(srcFd, dstFd int, name string) error {
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
	if b.copyBuf == nil {
		b.copyBuf = make([]byte, 256<<10)
	}
	for {
		n, err := unix.Read(in, b.copyBuf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			break
		}
		if err := b.fs.Write(out, b.copyBuf[:n]); err != nil {
			return err
		}
	}
	return b.setMeta(dstFd, name, &st, in, out, "")
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
