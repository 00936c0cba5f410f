// Package safeopen is the one way treetx opens, reads and looks at its own
// names beside a directory, and at the entries of its shadows.
//
// Other users may be able to write the parent directory that holds
// treetx's names (a group-writable repository root, a sticky /tmp), so
// anything may stand under one of those names: a symlink to /etc/passwd, a
// FIFO, a hard link to another file, a directory. Every function here opens
// relative to a descriptor of the parent, never follows a symlink (openat2
// with RESOLVE_NO_SYMLINKS, RESOLVE_NO_MAGICLINKS and RESOLVE_BENEATH where
// the kernel has it, O_NOFOLLOW otherwise), never blocks on a FIFO
// (O_NONBLOCK), and checks with fstat that what it opened is of the
// expected type before anything is read from it or written to it. What is
// not is refused with a *RefusedError, which callers report as a state that
// needs a person.
package safeopen

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrRefused is what every *RefusedError wraps: an entry under one of
// treetx's names is not what treetx makes there.
var ErrRefused = errors.New("not what treetx makes there")

// RefusedError reports an entry that is not of the type, link count,
// permissions or owner treetx expects under that name.
type RefusedError struct {
	Path string // the entry
	Want string // what treetx expects, in words
	Got  string // what is there, in words
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("%s: %v: it is %s, treetx expects %s; nothing done: move it away, or inspect it", e.Path, ErrRefused, e.Got, e.Want)
}

// Unwrap returns ErrRefused.
func (e *RefusedError) Unwrap() error { return ErrRefused }

// Type is the file type an entry must have.
type Type uint32

// The types treetx expects.
const (
	Regular   Type = unix.S_IFREG
	Directory Type = unix.S_IFDIR
)

func (t Type) String() string { return TypeName(uint32(t)) }

// TypeName names the file type of a stat mode, for messages.
func TypeName(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return "a regular file"
	case unix.S_IFDIR:
		return "a directory"
	case unix.S_IFLNK:
		return "a symlink"
	case unix.S_IFIFO:
		return "a FIFO"
	case unix.S_IFSOCK:
		return "a socket"
	case unix.S_IFCHR:
		return "a character device"
	case unix.S_IFBLK:
		return "a block device"
	}
	return fmt.Sprintf("a file of unknown type %#o", mode&unix.S_IFMT)
}

// Rules are what an opened entry must satisfy beyond its type.
type Rules struct {
	// OneLink requires a regular file to have exactly one link: a second
	// link could be a name of some other file outside treetx's names.
	OneLink bool
	// NotWritable requires that neither group nor others may write it.
	NotWritable bool
	// Owner, when set, is the only owner accepted.
	Owner *uint32
}

// Check says whether st, the entry at path, is of type t and follows r.
func Check(path string, st *unix.Stat_t, t Type, r Rules) error {
	if st.Mode&unix.S_IFMT != uint32(t) {
		return &RefusedError{Path: path, Want: t.String(), Got: TypeName(st.Mode)}
	}
	if r.OneLink && t == Regular && st.Nlink != 1 {
		return &RefusedError{Path: path, Want: "a file with one link", Got: fmt.Sprintf("a file with %d links (another name of it may be outside treetx's names)", st.Nlink)}
	}
	if r.NotWritable && st.Mode&0o022 != 0 {
		return &RefusedError{Path: path, Want: "an entry only its owner may write", Got: fmt.Sprintf("mode %#o, writable by group or others", st.Mode&0o7777)}
	}
	if r.Owner != nil && st.Uid != *r.Owner {
		return &RefusedError{Path: path, Want: fmt.Sprintf("owner uid %d", *r.Owner), Got: fmt.Sprintf("owned by uid %d", st.Uid)}
	}
	return nil
}

// Lstat looks at name in dirfd without following a symlink.
func Lstat(dirfd int, name string, st *unix.Stat_t) error {
	for {
		err := unix.Fstatat(dirfd, name, st, unix.AT_SYMLINK_NOFOLLOW)
		if err != unix.EINTR {
			return err
		}
	}
}

// OpenDir opens the directory at path (an absolute path the caller trusts,
// such as the parent of the directory of a transaction), for use as the
// dirfd of the other functions.
func OpenDir(path string) (int, error) {
	fd, err := openat(unix.AT_FDCWD, path, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return -1, &os.PathError{Op: "open", Path: path, Err: err}
	}
	return fd, nil
}

// OpenAt opens name, one component, in dirfd with flags (O_CLOEXEC,
// O_NOFOLLOW, O_NONBLOCK and O_NOCTTY are added), never following a
// symlink, and checks it is of type t and follows r; path names it in
// errors. With O_CREAT, a missing name is created with perm. The caller
// closes the descriptor.
func OpenAt(dirfd int, name, path string, flags int, perm uint32, t Type, r Rules) (int, *unix.Stat_t, error) {
	if name == "" || strings.ContainsRune(name, '/') || name == "." || name == ".." {
		return -1, nil, fmt.Errorf("%s: %q is not one name", path, name)
	}
	if t == Directory {
		flags |= unix.O_DIRECTORY
	}
	fd, err := openBeneath(dirfd, name, flags|unix.O_NONBLOCK|unix.O_NOCTTY, perm)
	if err != nil {
		if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) && t == Directory {
			// A symlink (O_NOFOLLOW) or, for a directory, something else.
			var st unix.Stat_t
			if Lstat(dirfd, name, &st) == nil {
				return -1, nil, &RefusedError{Path: path, Want: t.String(), Got: TypeName(st.Mode)}
			}
		}
		if errors.Is(err, unix.EISDIR) && t != Directory {
			return -1, nil, &RefusedError{Path: path, Want: t.String(), Got: "a directory"}
		}
		if errors.Is(err, unix.ENXIO) {
			// A socket, or a FIFO opened for writing with no reader.
			var st unix.Stat_t
			if Lstat(dirfd, name, &st) == nil {
				return -1, nil, &RefusedError{Path: path, Want: t.String(), Got: TypeName(st.Mode)}
			}
		}
		return -1, nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	st := new(unix.Stat_t)
	if err := unix.Fstat(fd, st); err != nil {
		unix.Close(fd)
		return -1, nil, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	if err := Check(path, st, t, r); err != nil {
		unix.Close(fd)
		return -1, nil, err
	}
	if t == Regular && flags&unix.O_ACCMODE == unix.O_RDONLY {
		// Reads must not block either; writes to a regular file never do.
		if err := clearNonblock(fd); err != nil {
			unix.Close(fd)
			return -1, nil, &os.PathError{Op: "fcntl", Path: path, Err: err}
		}
	}
	return fd, st, nil
}

// ReadFile reads the regular file name in dirfd, checked as OpenAt does
// with r, and at most limit bytes of it: a longer file is refused.
func ReadFile(dirfd int, name, path string, limit int64, r Rules) ([]byte, *unix.Stat_t, error) {
	fd, st, err := OpenAt(dirfd, name, path, unix.O_RDONLY, 0, Regular, r)
	if err != nil {
		return nil, nil, err
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	if st.Size > limit {
		return nil, nil, &RefusedError{Path: path, Want: fmt.Sprintf("a file of at most %d bytes", limit), Got: fmt.Sprintf("%d bytes long", st.Size)}
	}
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, nil, fmt.Errorf("read %s: %w", path, err)
	}
	if int64(len(data)) > limit {
		return nil, nil, &RefusedError{Path: path, Want: fmt.Sprintf("a file of at most %d bytes", limit), Got: "longer"}
	}
	return data, st, nil
}

// ReadNames lists the names in the directory dirfd (".", ".." left out),
// reading through a descriptor of its own.
func ReadNames(dirfd int, path string) ([]string, error) {
	fd, err := openat(dirfd, ".", unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	return f.Readdirnames(-1)
}

// OpenDirBeneath opens the directory rel (a relative, slash-separated path,
// "" or "." for rootfd itself) beneath rootfd, following no symlink and
// crossing into no other mount: the directory a manifest record's file is
// in. path names it in errors.
func OpenDirBeneath(rootfd int, rel, path string) (int, error) {
	if rel == "" {
		rel = "."
	}
	if err := CheckRel(rel, true); err != nil {
		return -1, fmt.Errorf("%s: %w", path, err)
	}
	fd, err := openBeneath2(rootfd, rel, unix.O_RDONLY|unix.O_DIRECTORY, unix.RESOLVE_NO_XDEV)
	if errors.Is(err, unix.ENOSYS) {
		fd, err = openByComponents(rootfd, rel)
	}
	if err != nil {
		return -1, &os.PathError{Op: "open", Path: path, Err: err}
	}
	return fd, nil
}

// CheckRel reports whether rel is a path relative to a tree's root that
// stays beneath it by its form: not empty (unless dot is allowed and rel is
// "."), not absolute, no empty, "." or ".." component, no NUL byte, at most
// 4096 bytes.
func CheckRel(rel string, dot bool) error {
	switch {
	case dot && rel == ".":
		return nil
	case rel == "":
		return errors.New("empty path")
	case len(rel) > unix.PathMax:
		return fmt.Errorf("path of %d bytes, longer than %d", len(rel), unix.PathMax)
	case strings.IndexByte(rel, 0) >= 0:
		return fmt.Errorf("path %q holds a NUL byte", rel)
	case rel[0] == '/':
		return fmt.Errorf("path %q is absolute", rel)
	}
	for c := range strings.SplitSeq(rel, "/") {
		if c == "" || c == "." || c == ".." {
			return fmt.Errorf("path %q has a component %q", rel, c)
		}
	}
	return nil
}

// Join names rel under root for messages.
func Join(root, rel string) string {
	if rel == "" || rel == "." {
		return root
	}
	return filepath.Join(root, filepath.FromSlash(rel))
}

func openat(dirfd int, name string, flags int, perm uint32) (int, error) {
	for {
		fd, err := unix.Openat(dirfd, name, flags|unix.O_CLOEXEC, perm)
		if err != unix.EINTR {
			return fd, err
		}
	}
}

// openBeneath opens the single name in dirfd without following a symlink:
// openat2 confined beneath dirfd where the kernel has it, openat with
// O_NOFOLLOW otherwise.
func openBeneath(dirfd int, name string, flags int, perm uint32) (int, error) {
	if flags&unix.O_CREAT == 0 {
		fd, err := openBeneath2(dirfd, name, flags, 0)
		if !errors.Is(err, unix.ENOSYS) {
			return fd, err
		}
	}
	// O_CREAT: openat2 takes it too, but the name is one component, so
	// O_NOFOLLOW says the same.
	return openat(dirfd, name, flags|unix.O_NOFOLLOW, perm)
}

func openBeneath2(dirfd int, rel string, flags int, resolve uint64) (int, error) {
	how := unix.OpenHow{
		Flags:   uint64(flags | unix.O_CLOEXEC | unix.O_NOFOLLOW),
		Resolve: resolve | unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	}
	for {
		fd, err := unix.Openat2(dirfd, rel, &how)
		if err == unix.EAGAIN && how.Resolve&unix.RESOLVE_NO_XDEV == 0 {
			// A rename raced the lookup; it is safe to retry.
			continue
		}
		if err != unix.EINTR {
			return fd, err
		}
	}
}

// openByComponents opens the directory rel beneath rootfd one component at
// a time, each with O_NOFOLLOW|O_DIRECTORY, refusing to cross into another
// file system: openat2's RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS|RESOLVE_NO_XDEV
// for kernels without it.
func openByComponents(rootfd int, rel string) (int, error) {
	var root unix.Stat_t
	if err := unix.Fstat(rootfd, &root); err != nil {
		return -1, err
	}
	fd, err := openat(rootfd, ".", unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil || rel == "." {
		return fd, err
	}
	for c := range strings.SplitSeq(rel, "/") {
		next, err := openat(fd, c, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
		unix.Close(fd)
		if err != nil {
			return -1, err
		}
		var st unix.Stat_t
		if err := unix.Fstat(next, &st); err != nil {
			unix.Close(next)
			return -1, err
		}
		if st.Dev != root.Dev {
			unix.Close(next)
			return -1, unix.EXDEV
		}
		fd = next
	}
	return fd, nil
}

func clearNonblock(fd int) error {
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		return err
	}
	_, err = unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl&^unix.O_NONBLOCK)
	return err
}

// Born returns when name in dirfd was created (statx's birth time), not
// following a symlink, and whether the file system keeps it.
func Born(dirfd int, name string) (unix.Timespec, bool) {
	var stx unix.Statx_t
	if err := unix.Statx(dirfd, name, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_BTIME, &stx); err != nil || stx.Mask&unix.STATX_BTIME == 0 {
		return unix.Timespec{}, false
	}
	return unix.Timespec{Sec: stx.Btime.Sec, Nsec: int64(stx.Btime.Nsec)}, true
}

// StatBorn is Lstat of name in dirfd that also returns its birth time, and
// whether the file system keeps it, in one statx call.
func StatBorn(dirfd int, name string, st *unix.Stat_t) (born unix.Timespec, ok bool, err error) {
	var stx unix.Statx_t
	for {
		err = unix.Statx(dirfd, name, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_BASIC_STATS|unix.STATX_BTIME, &stx)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		return born, false, err
	}
	*st = unix.Stat_t{
		Dev:   unix.Mkdev(stx.Dev_major, stx.Dev_minor),
		Ino:   stx.Ino,
		Nlink: uint64(stx.Nlink),
		Mode:  uint32(stx.Mode),
		Uid:   stx.Uid,
		Gid:   stx.Gid,
		Rdev:  unix.Mkdev(stx.Rdev_major, stx.Rdev_minor),
		Size:  int64(stx.Size),
		Atim:  unix.Timespec{Sec: stx.Atime.Sec, Nsec: int64(stx.Atime.Nsec)},
		Mtim:  unix.Timespec{Sec: stx.Mtime.Sec, Nsec: int64(stx.Mtime.Nsec)},
		Ctim:  unix.Timespec{Sec: stx.Ctime.Sec, Nsec: int64(stx.Ctime.Nsec)},
	}
	if stx.Mask&unix.STATX_BTIME != 0 {
		born, ok = unix.Timespec{Sec: stx.Btime.Sec, Nsec: int64(stx.Btime.Nsec)}, true
	}
	return born, ok, nil
}

// After reports whether a is strictly later than b.
func After(a, b unix.Timespec) bool {
	return a.Sec > b.Sec || a.Sec == b.Sec && a.Nsec > b.Nsec
}
