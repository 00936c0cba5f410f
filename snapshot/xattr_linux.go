package snapshot

import (
	"bytes"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/fsys"
)

// Xattr is one extended attribute (POSIX ACLs are stored as such).
type Xattr struct {
	Name  string
	Value []byte
}

// xattrBuf holds the buffers reused to read extended attributes.
type xattrBuf struct {
	names, value []byte
	noAt         bool // the kernel has no listxattrat
}

// read returns the attributes that list and get give, sorted by name; nil
// when there are none or the file system has none.
func (b *xattrBuf) read(list func([]byte) (int, error), get func(string, []byte) (int, error)) ([]Xattr, error) {
	if b.names == nil {
		b.names, b.value = make([]byte, 1024), make([]byte, 4096)
	}
	n, err := grow(&b.names, list)
	if err != nil || n == 0 {
		if errors.Is(err, unix.ENOTSUP) {
			err = nil
		}
		return nil, err
	}
	var out []Xattr
	for name := range strings.SplitSeq(strings.TrimSuffix(string(b.names[:n]), "\x00"), "\x00") {
		m, err := grow(&b.value, func(buf []byte) (int, error) { return get(name, buf) })
		if errors.Is(err, unix.ENODATA) {
			continue // removed meanwhile
		}
		if err != nil {
			return nil, err
		}
		out = append(out, Xattr{Name: name, Value: bytes.Clone(b.value[:m])})
	}
	slices.SortFunc(out, func(a, b Xattr) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// grow calls fn with *buf, growing it while fn says ERANGE.
func grow(buf *[]byte, fn func([]byte) (int, error)) (int, error) {
	for {
		n, err := fn(*buf)
		if !errors.Is(err, unix.ERANGE) {
			return n, err
		}
		size, err := fn(nil)
		if err != nil {
			return 0, err
		}
		*buf = make([]byte, max(size, 2*len(*buf)))
	}
}

// ofFd reads the attributes of an open file.
func (b *xattrBuf) ofFd(fd int) ([]Xattr, error) {
	return b.read(func(buf []byte) (int, error) { return unix.Flistxattr(fd, buf) },
		func(name string, buf []byte) (int, error) { return unix.Fgetxattr(fd, name, buf) })
}

// ofAt reads the attributes of name in dirfd (the directory dir), not
// following a symlink. It lists them with listxattrat (Linux 6.13), which
// answers the common case, no attributes, in one system call; it reads them
// by path otherwise, and on older kernels.
func (b *xattrBuf) ofAt(dirfd int, dir, name string) ([]Xattr, error) {
	full := func() string { return filepath.Join(dir, name) }
	if b.noAt {
		return b.ofPath(full())
	}
	p, err := unix.BytePtrFromString(name)
	if err != nil {
		return nil, err
	}
	if b.names == nil {
		b.names, b.value = make([]byte, 1024), make([]byte, 4096)
	}
	n, _, errno := unix.Syscall6(unix.SYS_LISTXATTRAT, uintptr(dirfd), uintptr(unsafe.Pointer(p)), unix.AT_SYMLINK_NOFOLLOW,
		uintptr(unsafe.Pointer(&b.names[0])), uintptr(len(b.names)), 0)
	switch {
	case errno == unix.ENOSYS:
		b.noAt = true
		return b.ofPath(full())
	case errno == 0 && n == 0:
		return nil, nil
	}
	return b.ofPath(full())
}

// ofPath reads the attributes of path, not following a symlink.
func (b *xattrBuf) ofPath(path string) ([]Xattr, error) {
	return b.read(func(buf []byte) (int, error) { return unix.Llistxattr(path, buf) },
		func(name string, buf []byte) (int, error) { return unix.Lgetxattr(path, name, buf) })
}

// syncXattrs makes name in dirfd, whose attributes are now have, carry
// exactly want. Attributes this process may not set (EPERM: trusted.*, or a
// symlink's user.*) are skipped, as chown's EPERM is.
func syncXattrs(fs fsys.FS, dirfd int, name string, have, want []Xattr) error {
	for _, w := range want {
		i := slices.IndexFunc(have, func(h Xattr) bool { return h.Name == w.Name })
		if i >= 0 && bytes.Equal(have[i].Value, w.Value) {
			continue
		}
		if err := fs.Setxattrat(dirfd, name, w.Name, w.Value); err != nil && !errors.Is(err, unix.EPERM) {
			return err
		}
	}
	for _, h := range have {
		if !slices.ContainsFunc(want, func(w Xattr) bool { return w.Name == h.Name }) {
			if err := fs.Removexattrat(dirfd, name, h.Name); err != nil && !errors.Is(err, unix.EPERM) && !errors.Is(err, unix.ENODATA) {
				return err
			}
		}
	}
	return nil
}

func equalXattrs(a, b []Xattr) bool {
	return slices.EqualFunc(a, b, func(x, y Xattr) bool { return x.Name == y.Name && bytes.Equal(x.Value, y.Value) })
}
