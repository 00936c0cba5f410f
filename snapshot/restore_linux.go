package snapshot

import (
	"errors"
	"fmt"
	"path"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/fsys"
	"github.com/treetx/treetx/internal/safeopen"
)

// Changed lists the hard-linked files among recs of the shadow open as
// rootfd (at the path root, for messages) whose content was written in place
// since the manifest was taken: their size or mtime differs from the record.
// The old content of such a file is lost, since the shadow shares its inode.
// A recorded file that is missing from the shadow, or is another inode, is
// an error: nothing but treetx changes a shadow by name. Each file is
// reached beneath rootfd without following a symlink.
//
// taken is when the manifest was complete (its mtime): a file born after it
// (where the file system keeps birth times) is not the one recorded but
// another that reuses its inode number, and is an error too.
func Changed(rootfd int, root string, recs Records, taken unix.Timespec) ([]string, error) {
	var changed []string
	c := dirCursor{root: root, rootfd: rootfd, fd: -1}
	defer c.close()
	err := recs(func(r Record) error {
		var st unix.Stat_t
		p := joinRel(root, r.Path)
		dirfd, base, err := c.at(r.Path)
		var born unix.Timespec
		var hasBorn bool
		if err == nil {
			born, hasBorn, err = safeopen.StatBorn(dirfd, base, &st)
		}
		if err != nil {
			return fmt.Errorf("check %s: %w", p, err)
		}
		if hasBorn && st.Ino == r.Ino && safeopen.After(born, taken) {
			return fmt.Errorf("check %s: inode %d was born after the manifest: not the file recorded, another that reuses its number", p, st.Ino)
		}
		if err := linkedType(p, &st); err != nil {
			return fmt.Errorf("check %w", err)
		}
		if st.Ino != r.Ino {
			return fmt.Errorf("check %s: inode %d, the manifest says %d: the shadow was changed by name", p, st.Ino, r.Ino)
		}
		if r.contentChanged(&st) {
			changed = append(changed, r.Path)
		}
		return nil
	})
	return changed, err
}

// Restore gives the hard-linked files of recs in the tree open as rootfd
// (at the path root, for messages) the mode,
// owner, extended attributes and times the manifest recorded, where they
// differ; a file written in place (size or mtime changed) keeps its times.
// It is idempotent. A record whose path is missing or is another inode is skipped
// and counted in skipped: that happens only when root is not the shadow the
// manifest was taken for.
//
// Extended attributes are read back only from files whose ctime is not
// before taken, the time the manifest was complete (its mtime): any change
// to an inode sets its ctime, so an older ctime means the attributes are as
// recorded. This saves a listxattr per file; it relies on the clock not
// being set back during the transaction.
//
// Each file is reached beneath rootfd without following a symlink, and
// changed only through its directory's descriptor with calls that do not
// follow one either; set-id bits are given to regular files only.
func Restore(rootfd int, root string, recs Records, taken unix.Timespec, fs FS) (restored, skipped int64, err error) {
	if fs == nil {
		fs = fsys.OS{}
	}
	var xb xattrBuf
	c := dirCursor{root: root, rootfd: rootfd, fd: -1}
	defer c.close()
	err = recs(func(r Record) error {
		var st unix.Stat_t
		p := joinRel(root, r.Path)
		dirfd, base, err := c.at(r.Path)
		var born unix.Timespec
		var hasBorn bool
		if err == nil {
			born, hasBorn, err = safeopen.StatBorn(dirfd, base, &st)
		}
		if err != nil {
			if errors.Is(err, unix.ENOENT) {
				skipped++
				return nil
			}
			return fmt.Errorf("restore %s: %w", p, err)
		}
		if st.Ino != r.Ino || hasBorn && safeopen.After(born, taken) {
			// Another file, or another that reuses its inode number.
			skipped++
			return nil
		}
		if err := linkedType(p, &st); err != nil {
			return fmt.Errorf("restore %w", err)
		}
		mode := r.Mode
		if st.Mode&unix.S_IFMT != unix.S_IFREG {
			mode &^= unix.S_ISUID | unix.S_ISGID
		}
		did := false
		if st.Uid != r.UID || st.Gid != r.GID {
			if err := fs.Lchownat(dirfd, base, int(r.UID), int(r.GID)); err != nil {
				return fmt.Errorf("restore owner of %s: %w", p, err)
			}
			did = true
			st.Mode &^= unix.S_ISUID | unix.S_ISGID // chown may have cleared them
		}
		have := r.Xattrs
		if !before(st.Ctim, taken) {
			if have, err = xb.ofPath(fsys.AtPath(dirfd, base)); err != nil {
				return fmt.Errorf("restore extended attributes of %s: %w", p, err)
			}
		}
		if !equalXattrs(have, r.Xattrs) {
			if err := syncXattrs(fs, dirfd, base, have, r.Xattrs); err != nil {
				return fmt.Errorf("restore extended attributes of %s: %w", p, err)
			}
			did = true
			if err := lstatAt(dirfd, base, &st); err != nil { // an access ACL sets the mode
				return fmt.Errorf("restore %s: %w", p, err)
			}
		}
		if st.Mode&07777 != mode {
			if err := fs.Fchmodat(dirfd, base, mode); err != nil {
				return fmt.Errorf("restore mode of %s: %w", p, err)
			}
			did = true
		}
		// A file written in place keeps its new times, so that it still
		// looks changed: its old content is lost. Otherwise only the atime
		// can differ (a read); putting it back needs to own the file, so a
		// user who does not (a shared repository) leaves it.
		if !r.contentChanged(&st) && st.Atim != r.Atime {
			if err := fs.Lutimesat(dirfd, base, r.Atime, r.Mtime); err != nil && !errors.Is(err, unix.EPERM) {
				return fmt.Errorf("restore times of %s: %w", p, err)
			}
			did = true
		}
		if did {
			restored++
		}
		return nil
	})
	return restored, skipped, err
}

// dirCursor opens the directories of a tree one at a time, in the order the
// manifest's records name them (a directory's records are contiguous), so
// that each file is reached relative to its directory's descriptor.
type dirCursor struct {
	root   string // the tree's path, for messages
	rootfd int    // the tree, open
	rel    string // the directory open as fd
	fd     int    // -1 when none is open
}

// at returns the descriptor of rel's directory and rel's base name.
func (c *dirCursor) at(rel string) (dirfd int, base string, err error) {
	dir, base := path.Split(rel)
	dir = strings.TrimSuffix(dir, "/")
	if c.fd >= 0 && dir == c.rel {
		return c.fd, base, nil
	}
	c.close()
	if c.fd, err = safeopen.OpenDirBeneath(c.rootfd, dir, joinRel(c.root, dotIfEmpty(dir))); err != nil {
		c.fd = -1
		return -1, "", err
	}
	c.rel = dir
	return c.fd, base, nil
}

func (c *dirCursor) close() {
	if c.fd >= 0 {
		unix.Close(c.fd)
		c.fd = -1
	}
}

// linkedType refuses an entry a manifest record names that cannot be a
// hard-linked file: a directory or a symlink.
func linkedType(p string, st *unix.Stat_t) error {
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR, unix.S_IFLNK:
		return &safeopen.RefusedError{Path: p, Want: "a hard-linked file", Got: safeopen.TypeName(st.Mode)}
	}
	return nil
}

// before reports whether a is strictly earlier than b.
func before(a, b unix.Timespec) bool {
	return a.Sec < b.Sec || a.Sec == b.Sec && a.Nsec < b.Nsec
}
