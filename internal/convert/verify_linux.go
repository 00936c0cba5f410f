package convert

import (
	"context"
	"fmt"
	"path"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/btrfs"
	"github.com/treetx/treetx/internal/fsys"
)

// The statx attributes (chattr flags statx reports) the comparison checks.
const comparedAttributes = unix.STATX_ATTR_COMPRESSED | unix.STATX_ATTR_NODUMP | unix.STATX_ATTR_IMMUTABLE | unix.STATX_ATTR_APPEND

// verify compares the copy with the source, entry by entry: names, types,
// modes, owners, sizes, mtimes, symlink targets, device numbers, extended
// attributes, the attributes statx reports, and which entries are links
// to one file. File data is not read: a clone shares the source's blocks,
// and a data copy is the kernel's. Any difference is ErrChanged.
func (c *copier) verify(ctx context.Context) error {
	var s, d unix.Statx_t
	if err := statxFd(c.srcRoot, &s); err != nil {
		return fmt.Errorf("convert: V5: stat %s: %w", c.srcPath, err)
	}
	if err := statxFd(c.dstRoot, &d); err != nil {
		return fmt.Errorf("convert: V5: stat %s: %w", c.dstPath, err)
	}
	if err := c.compare("", &s, &d, fdXattrs(c.srcRoot), fdXattrs(c.dstRoot), "", ""); err != nil {
		return err
	}
	return c.compareDir(ctx, c.srcRoot, c.dstRoot, "")
}

// differs is the error of a difference found at rel.
func (c *copier) differs(rel, format string, args ...any) error {
	return fmt.Errorf("convert %s: %w: %s differs from its copy (%s); stop what writes %s and run again", c.srcPath, ErrChanged, c.where(rel), fmt.Sprintf(format, args...), c.srcPath)
}

// compareDir compares the entries of directories sfd and dfd.
func (c *copier) compareDir(ctx context.Context, sfd, dfd int, rel string) error {
	sn, err := c.readNames(sfd)
	if err != nil {
		return fmt.Errorf("convert: V5: read directory %s: %w", c.where(rel), err)
	}
	dn, err := c.readNames(dfd)
	if err != nil {
		return fmt.Errorf("convert: V5: read directory %s: %w", c.where(rel), err)
	}
	if !slices.Equal(sn, dn) {
		for _, n := range sn {
			if !slices.Contains(dn, n) {
				return c.differs(path.Join(rel, n), "not in the copy")
			}
		}
		for _, n := range dn {
			if !slices.Contains(sn, n) {
				return c.differs(path.Join(rel, n), "only in the copy")
			}
		}
	}
	for _, name := range sn {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("convert: V5: %w", err)
		}
		crel := path.Join(rel, name)
		var s, d unix.Statx_t
		if err := statxAt(sfd, name, &s); err != nil {
			return c.differs(crel, "stat: %v", err)
		}
		if err := statxAt(dfd, name, &d); err != nil {
			return fmt.Errorf("convert: V5: stat the copy of %s: %w", c.where(crel), err)
		}
		sp, dp := fsys.AtPath(sfd, name), fsys.AtPath(dfd, name)
		if err := c.compare(crel, &s, &d, pathXattrs(sp), pathXattrs(dp), sp, dp); err != nil {
			return err
		}
		if uint32(s.Mode)&unix.S_IFMT != unix.S_IFDIR || s.Ino == btrfs.EmptySubvolDirObjectID {
			continue
		}
		if err := c.compareSubdir(ctx, sfd, dfd, name, crel); err != nil {
			return err
		}
	}
	return nil
}

func (c *copier) compareSubdir(ctx context.Context, sfd, dfd int, name, rel string) error {
	s, err := openDir(sfd, name)
	if err != nil {
		return c.differs(rel, "open: %v", err)
	}
	defer unix.Close(s)
	d, err := openDir(dfd, name)
	if err != nil {
		return fmt.Errorf("convert: V5: open the copy of %s: %w", c.where(rel), err)
	}
	defer unix.Close(d)
	return c.compareDir(ctx, s, d, rel)
}

// compare compares one entry with its copy; sp and dp are their paths
// (for readlink; "" for the roots).
func (c *copier) compare(rel string, s, d *unix.Statx_t, sx, dx xattrs, sp, dp string) error {
	st, dt := uint32(s.Mode)&unix.S_IFMT, uint32(d.Mode)&unix.S_IFMT
	switch {
	case st != dt:
		return c.differs(rel, "type %o, copy %o", st, dt)
	case s.Mode&0o7777 != d.Mode&0o7777:
		return c.differs(rel, "mode %04o, copy %04o", s.Mode&0o7777, d.Mode&0o7777)
	case s.Uid != d.Uid || s.Gid != d.Gid:
		return c.differs(rel, "owner %d:%d, copy %d:%d", s.Uid, s.Gid, d.Uid, d.Gid)
	case s.Mtime != d.Mtime:
		return c.differs(rel, "mtime %d.%09d, copy %d.%09d", s.Mtime.Sec, s.Mtime.Nsec, d.Mtime.Sec, d.Mtime.Nsec)
	case st == unix.S_IFREG && s.Size != d.Size:
		return c.differs(rel, "size %d, copy %d", s.Size, d.Size)
	case (st == unix.S_IFCHR || st == unix.S_IFBLK) && (s.Rdev_major != d.Rdev_major || s.Rdev_minor != d.Rdev_minor):
		return c.differs(rel, "device %d:%d, copy %d:%d", s.Rdev_major, s.Rdev_minor, d.Rdev_major, d.Rdev_minor)
	case s.Attributes&s.Attributes_mask&comparedAttributes != d.Attributes&d.Attributes_mask&comparedAttributes:
		return c.differs(rel, "attributes %#x, copy %#x", s.Attributes&comparedAttributes, d.Attributes&comparedAttributes)
	}
	if st == unix.S_IFLNK {
		a, err := readlinkAt(unix.AT_FDCWD, sp)
		if err != nil {
			return c.differs(rel, "readlink: %v", err)
		}
		b, err := readlinkAt(unix.AT_FDCWD, dp)
		if err != nil || a != b {
			return c.differs(rel, "target %q, copy %q (%v)", a, b, err)
		}
	}
	if st != unix.S_IFDIR {
		if err := c.compareLinks(rel, s, d); err != nil {
			return err
		}
	}
	a, err := sx.read()
	if err != nil {
		return c.differs(rel, "extended attributes: %v", err)
	}
	b, err := dx.read()
	if err != nil {
		return fmt.Errorf("convert: V5: extended attributes of the copy of %s: %w", c.where(rel), err)
	}
	if !equalXattrs(a, b) {
		return c.differs(rel, "extended attributes differ")
	}
	return nil
}

// compareLinks checks that the copy links together exactly the entries the
// source does.
func (c *copier) compareLinks(rel string, s, d *unix.Statx_t) error {
	l := c.links[s.Ino]
	if s.Nlink <= 1 || l == nil {
		if d.Nlink != 1 {
			return c.differs(rel, "1 link, copy %d", d.Nlink)
		}
		return nil
	}
	if l.dstIno == 0 {
		l.dstIno = d.Ino
	} else if l.dstIno != d.Ino {
		return c.differs(rel, "a link to %s, the copy is not", l.rel)
	}
	if uint64(d.Nlink) != l.seen {
		return c.differs(rel, "%d links in the tree, copy %d", l.seen, d.Nlink)
	}
	return nil
}

// linkedOutside lists the files some of whose links are outside the tree.
func (c *copier) linkedOutside() []string {
	var out []string
	for _, l := range c.links {
		if l.seen < l.nlink {
			out = append(out, l.rel)
		}
	}
	slices.Sort(out)
	return out
}
