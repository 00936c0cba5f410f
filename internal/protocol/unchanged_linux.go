package protocol

import (
	"bytes"
	"errors"
	"fmt"
	"io"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/layout"
)

// errChanged ends the comparison at the first difference.
var errChanged = errors.New("changed")

// unchanged reports whether the command left the directory exactly as the
// shadow (at name) holds it, except for the metadata of linked files, which
// restore puts back from the manifest: the same directory inode, the same
// names in every directory, each linked file the same inode, and every
// other entry (a directory, a copy, a symlink, a special file) with the
// attributes of its shadow and not changed since before the command started (its ctime
// earlier than the journal's "running" write, B8). Such a rollback needs no
// exchange: the directory's inodes, and so the working directory of every
// process inside it, stay.
//
// A name in the directory that the shadow lacks is allowed only in a
// directory not changed since before the command (one the shadow left out:
// a lock file that was there before).
func (tx *Tx) unchanged(name string) (bool, error) {
	if tx.started == (unix.Timespec{}) || tx.j.IsSnapshot() {
		// Not this process's Begin; or a snapshot, whose comparison would
		// walk both trees: it is put back.
		return false, nil
	}
	dfd, err := openDirNoAtime(tx.pfd, tx.n.Base)
	if err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ELOOP) {
			return false, nil
		}
		return false, fmt.Errorf("open %s: %w", tx.n.Dir, err)
	}
	defer unix.Close(dfd)
	var st unix.Stat_t
	if err := unix.Fstat(dfd, &st); err != nil {
		return false, fmt.Errorf("stat %s: %w", tx.n.Dir, err)
	}
	if layout.IDOf(&st) != tx.j.Dir {
		return false, nil
	}
	if err := tx.expectShadowAt(name); err != nil {
		return false, err
	}
	sfd, err := openDirNoAtime(tx.pfd, name)
	if err != nil {
		return false, fmt.Errorf("open shadow %s: %w", tx.n.Path(name), err)
	}
	defer unix.Close(sfd)
	err = tx.sameDir(dfd, sfd, tx.n.Dir)
	if errors.Is(err, errChanged) {
		return false, nil
	}
	return err == nil, err
}

// before reports whether ts is earlier than the command's start.
func (tx *Tx) before(ts unix.Timespec) bool {
	return ts.Sec < tx.started.Sec || ts.Sec == tx.started.Sec && ts.Nsec < tx.started.Nsec
}

// sameDir compares the directory open as dfd with its shadow, open as sfd.
func (tx *Tx) sameDir(dfd, sfd int, path string) error {
	var d, s unix.Stat_t
	if err := unix.Fstat(dfd, &d); err != nil {
		return fmt.Errorf("stat %s: %w", path, err)
	}
	if err := unix.Fstat(sfd, &s); err != nil {
		return fmt.Errorf("stat shadow of %s: %w", path, err)
	}
	if !tx.before(d.Ctim) || d.Mode != s.Mode || d.Uid != s.Uid || d.Gid != s.Gid || d.Mtim != s.Mtim {
		return errChanged
	}
	dents, err := dirents(dfd, path)
	if err != nil {
		return err
	}
	sents, err := dirents(sfd, path)
	if err != nil {
		return err
	}
	for name := range sents {
		if _, ok := dents[name]; !ok {
			return errChanged
		}
	}
	for name, ino := range dents {
		sino, ok := sents[name]
		switch {
		case !ok:
			// Left out of the shadow, and there before: the directory
			// has not changed since (checked above).
			continue
		case ino == sino:
			continue // a linked file: restore puts its metadata back
		}
		if err := tx.sameEntry(dfd, sfd, name, path+"/"+name); err != nil {
			return err
		}
	}
	return nil
}

// sameEntry compares the entry name, which is not the same inode in the
// directory (dfd) and its shadow (sfd).
func (tx *Tx) sameEntry(dfd, sfd int, name, path string) error {
	var d, s unix.Stat_t
	if err := unix.Fstatat(dfd, name, &d, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("stat %s: %w", path, err)
	}
	if err := unix.Fstatat(sfd, name, &s, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("stat shadow of %s: %w", path, err)
	}
	if !tx.before(d.Ctim) || d.Mode != s.Mode || d.Uid != s.Uid || d.Gid != s.Gid {
		return errChanged
	}
	switch d.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		cd, err := openDirNoAtime(dfd, name)
		if err != nil {
			return fmt.Errorf("open %s: %w", path, err)
		}
		defer unix.Close(cd)
		cs, err := openDirNoAtime(sfd, name)
		if err != nil {
			return fmt.Errorf("open shadow of %s: %w", path, err)
		}
		defer unix.Close(cs)
		return tx.sameDir(cd, cs, path)
	case unix.S_IFREG, unix.S_IFLNK:
		// A copy, or a symlink: the same inode as at Begin, not changed
		// since (its ctime), so its content is what the shadow copied.
		// Nothing is read: reading would change atimes.
		if d.Size != s.Size || d.Mtim != s.Mtim && d.Mode&unix.S_IFMT == unix.S_IFREG {
			return errChanged
		}
		return nil
	default:
		if d.Rdev != s.Rdev {
			return errChanged
		}
		return nil
	}
}

// openDirNoAtime opens the directory name in dirfd without updating its
// access time where this process may (O_NOATIME: the owner, or
// CAP_FOWNER).
func openDirNoAtime(dirfd int, name string) (int, error) {
	const flags = unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
	fd, err := unix.Openat(dirfd, name, flags|unix.O_NOATIME, 0)
	if errors.Is(err, unix.EPERM) {
		fd, err = unix.Openat(dirfd, name, flags, 0)
	}
	return fd, err
}

// dirents lists the directory open as fd: each name with its inode number,
// as getdents reports them (no stat).
func dirents(fd int, path string) (map[string]uint64, error) {
	if _, err := unix.Seek(fd, 0, io.SeekStart); err != nil {
		return nil, fmt.Errorf("list %s: %w", path, err)
	}
	out := map[string]uint64{}
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.Getdents(fd, buf)
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", path, err)
		}
		if n <= 0 {
			return out, nil
		}
		for b := buf[:n]; len(b) >= 19; {
			// struct linux_dirent64: ino, off (8 bytes each), reclen (2),
			// type (1), name (NUL-terminated).
			reclen := int(b[16]) | int(b[17])<<8
			if reclen < 19 || reclen > len(b) {
				return nil, fmt.Errorf("list %s: bad directory record", path)
			}
			ino := uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 | uint64(b[4])<<32 | uint64(b[5])<<40 | uint64(b[6])<<48 | uint64(b[7])<<56
			name := b[19:reclen]
			if i := bytes.IndexByte(name, 0); i >= 0 {
				name = name[:i]
			}
			if s := string(name); s != "." && s != ".." {
				out[s] = ino
			}
			b = b[reclen:]
		}
	}
}
