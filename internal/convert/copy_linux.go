package convert

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/btrfs"
	"github.com/treetx/treetx/internal/fsys"
	"github.com/treetx/treetx/internal/reflink"
)

// File attributes (chattr; FS_IOC_GETFLAGS): those a copy gives its file,
// and those Convert refuses.
const (
	flagSync    = 0x00000008 // FS_SYNC_FL
	flagImmut   = 0x00000010 // FS_IMMUTABLE_FL
	flagAppend  = 0x00000020 // FS_APPEND_FL
	flagNodump  = 0x00000040 // FS_NODUMP_FL
	flagNoatime = 0x00000080 // FS_NOATIME_FL
	flagCompr   = 0x00000004 // FS_COMPR_FL
	flagNocomp  = 0x00000400 // FS_NOCOMP_FL
	flagDirsync = 0x00010000 // FS_DIRSYNC_FL
	flagNocow   = 0x00800000 // FS_NOCOW_FL
	copiedFlags = flagSync | flagNodump | flagNoatime | flagCompr | flagNocomp | flagDirsync | flagNocow
)

// link is a file with several links: where its first copy is, and how many
// of its links the copy has met.
type link struct {
	rel         string
	seen, nlink uint64
	dstIno      uint64 // set by verify
}

// copier copies one tree into another, then compares them.
type copier struct {
	srcRoot, dstRoot int    // the trees' roots, open
	srcPath, dstPath string // for messages
	pfd              int    // the parent of both
	dstName          string // the copy's name in pfd
	dev              uint64 // the source tree's st_dev
	onEntry          func()
	entries, clones  int64
	copies           int64
	links            map[uint64]*link // by source inode
	dirent           []byte
}

// newCopier opens the tree srcName in pfd and its copy's root dstName.
func newCopier(pfd int, srcName, dstName, srcPath, dstPath string, onEntry func()) (*copier, error) {
	c := &copier{srcRoot: -1, dstRoot: -1, pfd: pfd, dstName: dstName, srcPath: srcPath, dstPath: dstPath,
		onEntry: onEntry, links: map[uint64]*link{}, dirent: make([]byte, 64<<10)}
	var err error
	if c.srcRoot, err = openDir(pfd, srcName); err != nil {
		return nil, fmt.Errorf("convert: V4: open %s: %w", srcPath, err)
	}
	var stx unix.Statx_t
	if err := statxFd(c.srcRoot, &stx); err != nil {
		c.close()
		return nil, fmt.Errorf("convert: V4: stat %s: %w", srcPath, err)
	}
	if stx.Attributes_mask&stx.Attributes&unix.STATX_ATTR_MOUNT_ROOT != 0 {
		c.close()
		return nil, fmt.Errorf("convert %s: a mount point: convert the directory on the file system itself", srcPath)
	}
	c.dev = unix.Mkdev(stx.Dev_major, stx.Dev_minor)
	if c.dstRoot, err = openDir(pfd, dstName); err != nil {
		c.close()
		return nil, fmt.Errorf("convert: V4: open %s: %w", dstPath, err)
	}
	return c, nil
}

func (c *copier) close() {
	for _, fd := range []int{c.srcRoot, c.dstRoot} {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
}

func openDir(dirfd int, name string) (int, error) {
	for {
		fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
		if err != unix.EINTR {
			return fd, err
		}
	}
}

func statxFd(fd int, stx *unix.Statx_t) error {
	return unix.Statx(fd, "", unix.AT_EMPTY_PATH|unix.AT_STATX_SYNC_AS_STAT, unix.STATX_BASIC_STATS, stx)
}

func statxAt(dirfd int, name string, stx *unix.Statx_t) error {
	for {
		err := unix.Statx(dirfd, name, unix.AT_SYMLINK_NOFOLLOW|unix.AT_STATX_SYNC_AS_STAT, unix.STATX_BASIC_STATS, stx)
		if err != unix.EINTR {
			return err
		}
	}
}

// readNames lists the entries of the directory fd, sorted.
func (c *copier) readNames(fd int) ([]string, error) {
	if _, err := unix.Seek(fd, 0, 0); err != nil {
		return nil, err
	}
	var names []string
	for {
		n, err := unix.Getdents(fd, c.dirent)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, err
		}
		if n <= 0 {
			break
		}
		_, _, names = unix.ParseDirent(c.dirent[:n], -1, names)
	}
	slices.Sort(names)
	return names, nil
}

// copyTree copies the tree, then gives the copy's root the source root's
// metadata.
func (c *copier) copyTree(ctx context.Context) error {
	if err := c.copyDir(ctx, c.srcRoot, c.dstRoot, ""); err != nil {
		return err
	}
	var stx unix.Statx_t
	if err := statxFd(c.srcRoot, &stx); err != nil {
		return fmt.Errorf("convert: V4: stat %s: %w", c.srcPath, err)
	}
	if err := c.setDirMeta(c.srcRoot, c.dstRoot, c.pfd, c.dstName, "", &stx); err != nil {
		return err
	}
	c.onEntry()
	return nil
}

// where names rel (relative to the trees' roots) in the source, for errors.
func (c *copier) where(rel string) string { return filepath.Join(c.srcPath, filepath.FromSlash(rel)) }

// copyDir copies the entries of directory sfd into dfd.
func (c *copier) copyDir(ctx context.Context, sfd, dfd int, rel string) error {
	names, err := c.readNames(sfd)
	if err != nil {
		return fmt.Errorf("convert: V4: read directory %s: %w", c.where(rel), err)
	}
	for _, name := range names {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("convert: V4: %w", err)
		}
		crel := path.Join(rel, name)
		var stx unix.Statx_t
		if err := statxAt(sfd, name, &stx); err != nil {
			if errors.Is(err, unix.ENOENT) {
				return fmt.Errorf("convert %s: %w: %s disappeared", c.srcPath, ErrChanged, c.where(crel))
			}
			return fmt.Errorf("convert: V4: stat %s: %w", c.where(crel), err)
		}
		mode := uint32(stx.Mode)
		if mode&unix.S_IFMT == unix.S_IFDIR {
			err = c.copySubdir(ctx, sfd, dfd, name, crel, &stx)
		} else if stx.Nlink > 1 && c.links[stx.Ino] != nil {
			l := c.links[stx.Ino]
			if err = unix.Linkat(c.dstRoot, l.rel, dfd, name, 0); err != nil {
				err = fmt.Errorf("convert: V4: link %s (as %s): %w", c.where(crel), l.rel, err)
			}
			l.seen++
		} else {
			switch mode & unix.S_IFMT {
			case unix.S_IFREG:
				err = c.copyFile(sfd, dfd, name, crel, &stx)
			case unix.S_IFLNK:
				err = c.copySymlink(sfd, dfd, name, crel, &stx)
			default:
				err = c.copyNode(sfd, dfd, name, crel, &stx)
			}
			if err == nil && stx.Nlink > 1 {
				c.links[stx.Ino] = &link{rel: crel, seen: 1, nlink: uint64(stx.Nlink)}
			}
		}
		if err != nil {
			return err
		}
		c.entries++
		c.onEntry()
	}
	return nil
}

// copySubdir copies directory name of sfd into dfd, with what it holds.
func (c *copier) copySubdir(ctx context.Context, sfd, dfd int, name, rel string, stx *unix.Statx_t) error {
	if unix.Mkdev(stx.Dev_major, stx.Dev_minor) != c.dev || stx.Attributes_mask&stx.Attributes&unix.STATX_ATTR_MOUNT_ROOT != 0 {
		// An empty directory that stands for a subvolume a snapshot left
		// out is a plain empty directory as far as a copy goes.
		if stx.Ino != btrfs.EmptySubvolDirObjectID {
			what := "a mount point"
			if stx.Ino == btrfs.FirstFreeObjectID {
				what = "a nested subvolume"
			}
			return fmt.Errorf("convert %s: %w: %s is %s, which a snapshot of %s would leave out (convert a tree without it)", c.srcPath, ErrNested, c.where(rel), what, c.srcPath)
		}
	}
	if err := unix.Mkdirat(dfd, name, 0o700); err != nil {
		return fmt.Errorf("convert: V4: mkdir %s: %w", filepath.Join(c.dstPath, rel), err)
	}
	s, err := openDir(sfd, name)
	if err != nil {
		return fmt.Errorf("convert: V4: open %s: %w", c.where(rel), err)
	}
	defer unix.Close(s)
	d, err := openDir(dfd, name)
	if err != nil {
		return fmt.Errorf("convert: V4: open %s: %w", filepath.Join(c.dstPath, rel), err)
	}
	defer unix.Close(d)
	if stx.Ino != btrfs.EmptySubvolDirObjectID {
		if err := c.copyDir(ctx, s, d, rel); err != nil {
			return err
		}
	}
	return c.setDirMeta(s, d, dfd, name, rel, stx)
}

// setDirMeta gives the copy d (name in dfd) of directory s its owner,
// extended attributes, mode, file attributes and times.
func (c *copier) setDirMeta(s, d, dfd int, name, rel string, stx *unix.Statx_t) error {
	fail := func(what string, err error) error {
		return fmt.Errorf("convert: V4: %s of %s: %w", what, c.where(rel), err)
	}
	if err := c.chown(d, rel, stx); err != nil {
		return err
	}
	if err := copyXattrs(fdXattrs(s), fdXattrs(d)); err != nil {
		return fail("extended attributes", err)
	}
	if err := unix.Fchmod(d, uint32(stx.Mode)&0o7777); err != nil {
		return fail("mode", err)
	}
	if err := copyFlags(s, d, rel); err != nil {
		return fail("file attributes", err)
	}
	if err := setTimes(dfd, name, stx); err != nil {
		return fail("times", err)
	}
	return nil
}

// chown gives fd the owner of stx; only root may give another's.
func (c *copier) chown(fd int, rel string, stx *unix.Statx_t) error {
	err := unix.Fchown(fd, int(stx.Uid), int(stx.Gid))
	if errors.Is(err, unix.EPERM) {
		return fmt.Errorf("convert %s: %w: %s belongs to uid %d gid %d, which only root can give its copy", c.srcPath, ErrUnsupported, c.where(rel), stx.Uid, stx.Gid)
	}
	if err != nil {
		return fmt.Errorf("convert: V4: chown %s: %w", c.where(rel), err)
	}
	return nil
}

// copyFile makes name in dfd a clone (or a copy) of regular file name in sfd.
func (c *copier) copyFile(sfd, dfd int, name, rel string, stx *unix.Statx_t) error {
	in, err := unix.Openat(sfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK|unix.O_NOATIME, 0)
	if errors.Is(err, unix.EPERM) { // O_NOATIME: not the owner, not root
		in, err = unix.Openat(sfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	}
	if err != nil {
		return fmt.Errorf("convert: V4: open %s: %w", c.where(rel), err)
	}
	defer unix.Close(in)
	var now unix.Statx_t
	if err := statxFd(in, &now); err != nil {
		return fmt.Errorf("convert: V4: stat %s: %w", c.where(rel), err)
	}
	if now.Ino != stx.Ino || uint32(now.Mode)&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("convert %s: %w: %s was replaced", c.srcPath, ErrChanged, c.where(rel))
	}
	flags, err := getFlags(in)
	if err != nil {
		return fmt.Errorf("convert: V4: file attributes of %s: %w", c.where(rel), err)
	}
	if flags&(flagImmut|flagAppend) != 0 {
		return fmt.Errorf("convert %s: %w: %s is immutable or append-only (chattr -i -a it, convert, then set it again)", c.srcPath, ErrUnsupported, c.where(rel))
	}
	out, err := unix.Openat(dfd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("convert: V4: create %s: %w", filepath.Join(c.dstPath, rel), err)
	}
	defer unix.Close(out)
	// nodatacow and compression are set while the file is empty: btrfs
	// clones only between files that agree on nodatacow.
	if err := setFlags(out, flags); err != nil {
		return fmt.Errorf("convert: V4: file attributes of %s: %w", filepath.Join(c.dstPath, rel), err)
	}
	m, err := reflink.Copy(out, in)
	if err != nil {
		return fmt.Errorf("convert: V4: copy %s: %w", c.where(rel), err)
	}
	if m == reflink.Clone {
		c.clones++
	} else {
		c.copies++
	}
	if err := c.chown(out, rel, stx); err != nil {
		return err
	}
	if err := copyXattrs(fdXattrs(in), fdXattrs(out)); err != nil {
		return fmt.Errorf("convert: V4: extended attributes of %s: %w", c.where(rel), err)
	}
	if err := unix.Fchmod(out, uint32(stx.Mode)&0o7777); err != nil {
		return fmt.Errorf("convert: V4: mode of %s: %w", c.where(rel), err)
	}
	if err := setTimes(dfd, name, stx); err != nil {
		return fmt.Errorf("convert: V4: times of %s: %w", c.where(rel), err)
	}
	return nil
}

// copySymlink recreates symlink name of sfd in dfd.
func (c *copier) copySymlink(sfd, dfd int, name, rel string, stx *unix.Statx_t) error {
	target, err := readlinkAt(sfd, name)
	if err != nil {
		return fmt.Errorf("convert: V4: readlink %s: %w", c.where(rel), err)
	}
	if err := unix.Symlinkat(target, dfd, name); err != nil {
		return fmt.Errorf("convert: V4: symlink %s: %w", filepath.Join(c.dstPath, rel), err)
	}
	return c.nodeMeta(sfd, dfd, name, rel, stx, false)
}

// copyNode recreates the FIFO, socket or device file name of sfd in dfd.
func (c *copier) copyNode(sfd, dfd int, name, rel string, stx *unix.Statx_t) error {
	mode := uint32(stx.Mode)&unix.S_IFMT | 0o600
	dev := int(unix.Mkdev(stx.Rdev_major, stx.Rdev_minor))
	if err := unix.Mknodat(dfd, name, mode, dev); err != nil {
		if errors.Is(err, unix.EPERM) {
			return fmt.Errorf("convert %s: %w: %s is a device file, which only root can make", c.srcPath, ErrUnsupported, c.where(rel))
		}
		return fmt.Errorf("convert: V4: mknod %s: %w", filepath.Join(c.dstPath, rel), err)
	}
	return c.nodeMeta(sfd, dfd, name, rel, stx, true)
}

// nodeMeta gives name in dfd (a symlink or a special file, reached by
// name) the owner, extended attributes, mode (chmod: not for a symlink)
// and times of name in sfd.
func (c *copier) nodeMeta(sfd, dfd int, name, rel string, stx *unix.Statx_t, chmod bool) error {
	if err := unix.Fchownat(dfd, name, int(stx.Uid), int(stx.Gid), unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if errors.Is(err, unix.EPERM) {
			return fmt.Errorf("convert %s: %w: %s belongs to uid %d gid %d, which only root can give its copy", c.srcPath, ErrUnsupported, c.where(rel), stx.Uid, stx.Gid)
		}
		return fmt.Errorf("convert: V4: chown %s: %w", c.where(rel), err)
	}
	if err := copyXattrs(pathXattrs(fsys.AtPath(sfd, name)), pathXattrs(fsys.AtPath(dfd, name))); err != nil {
		return fmt.Errorf("convert: V4: extended attributes of %s: %w", c.where(rel), err)
	}
	if chmod {
		if err := unix.Fchmodat(dfd, name, uint32(stx.Mode)&0o7777, 0); err != nil {
			return fmt.Errorf("convert: V4: mode of %s: %w", c.where(rel), err)
		}
	}
	if err := setTimes(dfd, name, stx); err != nil {
		return fmt.Errorf("convert: V4: times of %s: %w", c.where(rel), err)
	}
	return nil
}

func setTimes(dfd int, name string, stx *unix.Statx_t) error {
	ts := []unix.Timespec{
		{Sec: stx.Atime.Sec, Nsec: int64(stx.Atime.Nsec)},
		{Sec: stx.Mtime.Sec, Nsec: int64(stx.Mtime.Nsec)},
	}
	return unix.UtimesNanoAt(dfd, name, ts, unix.AT_SYMLINK_NOFOLLOW)
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

// getFlags returns the file attributes of fd (0 where the file system has
// none).
func getFlags(fd int) (uint32, error) {
	v, err := unix.IoctlGetUint32(fd, unix.FS_IOC_GETFLAGS)
	if errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL) {
		return 0, nil
	}
	return v, err
}

// setFlags makes the copied attributes of fd those of want.
func setFlags(fd int, want uint32) error {
	have, err := getFlags(fd)
	if err != nil {
		return err
	}
	next := have&^copiedFlags | want&copiedFlags
	if next == have {
		return nil
	}
	return unix.IoctlSetPointerInt(fd, unix.FS_IOC_SETFLAGS, int(next))
}

// copyFlags gives directory d the copied attributes of directory s.
func copyFlags(s, d int, rel string) error {
	flags, err := getFlags(s)
	if err != nil {
		return err
	}
	if flags&(flagImmut|flagAppend) != 0 {
		return fmt.Errorf("%w: the directory is immutable or append-only (chattr -i -a it, convert, then set it again)", ErrUnsupported)
	}
	return setFlags(d, flags)
}

// xattrs reads and writes one file's extended attributes.
type xattrs struct {
	list   func([]byte) (int, error)
	get    func(string, []byte) (int, error)
	set    func(string, []byte) error
	remove func(string) error
}

func fdXattrs(fd int) xattrs {
	return xattrs{
		list:   func(b []byte) (int, error) { return unix.Flistxattr(fd, b) },
		get:    func(n string, b []byte) (int, error) { return unix.Fgetxattr(fd, n, b) },
		set:    func(n string, v []byte) error { return unix.Fsetxattr(fd, n, v, 0) },
		remove: func(n string) error { return unix.Fremovexattr(fd, n) },
	}
}

// pathXattrs reaches a file by path, not following a symlink at its end.
func pathXattrs(p string) xattrs {
	return xattrs{
		list:   func(b []byte) (int, error) { return unix.Llistxattr(p, b) },
		get:    func(n string, b []byte) (int, error) { return unix.Lgetxattr(p, n, b) },
		set:    func(n string, v []byte) error { return unix.Lsetxattr(p, n, v, 0) },
		remove: func(n string) error { return unix.Lremovexattr(p, n) },
	}
}

// xattr is one extended attribute.
type xattr struct {
	name  string
	value []byte
}

// read returns x's attributes, sorted by name.
func (x xattrs) read() ([]xattr, error) {
	grow := func(fn func([]byte) (int, error)) ([]byte, error) {
		for {
			size, err := fn(nil)
			if err != nil {
				return nil, err
			}
			buf := make([]byte, size)
			n, err := fn(buf)
			if errors.Is(err, unix.ERANGE) {
				continue // grew meanwhile
			}
			return buf[:n], err
		}
	}
	list, err := grow(x.list)
	if errors.Is(err, unix.ENOTSUP) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listxattr: %w", err)
	}
	var out []xattr
	for name := range strings.SplitSeq(strings.TrimSuffix(string(list), "\x00"), "\x00") {
		if name == "" {
			continue
		}
		v, err := grow(func(b []byte) (int, error) { return x.get(name, b) })
		if errors.Is(err, unix.ENODATA) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("getxattr %s: %w", name, err)
		}
		out = append(out, xattr{name, v})
	}
	slices.SortFunc(out, func(a, b xattr) int { return strings.Compare(a.name, b.name) })
	return out, nil
}

// copyXattrs makes dst's extended attributes exactly src's (dst is new:
// it has none but what it inherited, a default ACL's).
func copyXattrs(src, dst xattrs) error {
	want, err := src.read()
	if err != nil {
		return err
	}
	have, err := dst.read()
	if err != nil {
		return err
	}
	for _, h := range have {
		if !slices.ContainsFunc(want, func(w xattr) bool { return w.name == h.name }) {
			if err := dst.remove(h.name); err != nil && !errors.Is(err, unix.ENODATA) {
				return fmt.Errorf("removexattr %s: %w", h.name, err)
			}
		}
	}
	for _, w := range want {
		if err := dst.set(w.name, w.value); err != nil {
			return fmt.Errorf("setxattr %s: %w", w.name, err)
		}
	}
	return nil
}

func equalXattrs(a, b []xattr) bool {
	return slices.EqualFunc(a, b, func(x, y xattr) bool { return x.name == y.name && bytes.Equal(x.value, y.value) })
}
