// Package reflink copies the content of a regular file, sharing its blocks
// with the source where the file system can (a reflink: FICLONE on btrfs,
// XFS made with reflink=1, bcachefs, OCFS2, overlayfs over those), and
// copying the data where it cannot: copy_file_range(2) (which may itself
// share blocks, or copy inside the kernel), else read and write. Holes
// stay holes in every case (SEEK_DATA and SEEK_HOLE).
//
// A clone shares the blocks copy-on-write: a later write to either file
// changes only that file, unlike a hard link. That is why treetx's copies
// of files written in place can be clones: they cost no data, and the
// command's writes in place cannot reach them.
package reflink

import (
	"errors"
	"fmt"
	"io"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/fsys"
)

// Method is how Copy copied a file.
type Method int

const (
	// Clone shares every block with the source (FICLONE).
	Clone Method = iota
	// CopyRange copied with copy_file_range(2), which on some file systems
	// shares blocks as well (btrfs, XFS, NFS 4.2 server-side copy).
	CopyRange
	// ReadWrite copied the data through this process.
	ReadWrite
)

// String names the method as docs/btrfs.md does.
func (m Method) String() string {
	switch m {
	case Clone:
		return "clone"
	case CopyRange:
		return "copy_file_range"
	case ReadWrite:
		return "read/write"
	}
	return fmt.Sprintf("Method(%d)", int(m))
}

// cannotClone reports whether a FICLONE error means "not here" (so that a
// copy is the answer) rather than a failure to report: another file system
// (EXDEV), one without reflinks (EOPNOTSUPP, ENOTTY, ENOSYS, EINVAL: the
// last also where btrfs refuses to clone between a nodatacow and a
// datacow file), or a file the kernel will not clone (ETXTBSY: an active
// swap file; EPERM: an immutable or append-only destination is a failure
// anyway, and the copy reports it).
func cannotClone(err error) bool {
	for _, e := range []error{unix.EXDEV, unix.EOPNOTSUPP, unix.ENOTTY, unix.ENOSYS, unix.EINVAL, unix.ETXTBSY} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// Copy makes dst, an empty regular file open for writing, a copy of the
// content of src, open for reading: a clone where the file system can
// make one, else a data copy that keeps src's holes. It reports how it
// copied. On error, dst may hold part of the data. File metadata (mode,
// owner, times, extended attributes) is the caller's.
func Copy(dst, src int) (Method, error) {
	err := unix.IoctlFileClone(dst, src)
	if err == nil {
		return Clone, nil
	}
	if !cannotClone(err) {
		return Clone, fmt.Errorf("reflink: clone %s to %s: %w", fsys.AtPath(src, ""), fsys.AtPath(dst, ""), err)
	}
	return copyData(dst, src)
}

// copyData copies src to dst segment by segment of data, leaving holes
// where src has them, with copy_file_range where it works.
func copyData(dst, src int) (Method, error) {
	var st unix.Stat_t
	if err := unix.Fstat(src, &st); err != nil {
		return ReadWrite, fmt.Errorf("reflink: stat %s: %w", fsys.AtPath(src, ""), err)
	}
	method := CopyRange
	var buf []byte
	for off := int64(0); off < st.Size; {
		start, err := unix.Seek(src, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole from off to the end
		}
		if errors.Is(err, unix.EINVAL) {
			start = off // no SEEK_DATA here: all data
		} else if err != nil {
			return method, fmt.Errorf("reflink: seek data in %s: %w", fsys.AtPath(src, ""), err)
		}
		end, err := unix.Seek(src, start, unix.SEEK_HOLE)
		if err != nil {
			end = st.Size
		}
		end = min(end, st.Size)
		for start < end {
			var n int
			if method == CopyRange {
				in, out := start, start
				n, err = unix.CopyFileRange(src, &in, dst, &out, int(min(end-start, 1<<30)), 0)
				if err != nil && (errors.Is(err, unix.EXDEV) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL)) {
					method, err = ReadWrite, nil
					continue
				}
			} else {
				if buf == nil {
					buf = make([]byte, 1<<20)
				}
				n, err = readWriteAt(dst, src, buf[:min(end-start, int64(len(buf)))], start)
			}
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil {
				return method, fmt.Errorf("reflink: copy %s to %s at %d: %w", fsys.AtPath(src, ""), fsys.AtPath(dst, ""), start, err)
			}
			if n == 0 {
				return method, fmt.Errorf("reflink: copy %s to %s at %d: %w (the file shrank)", fsys.AtPath(src, ""), fsys.AtPath(dst, ""), start, io.ErrUnexpectedEOF)
			}
			start += int64(n)
		}
		off = end
	}
	// A hole at the end has no data to copy: the size gives it.
	if err := unix.Ftruncate(dst, st.Size); err != nil {
		return method, fmt.Errorf("reflink: truncate %s: %w", fsys.AtPath(dst, ""), err)
	}
	return method, nil
}

// readWriteAt reads up to len(buf) bytes of src at off and writes them to
// dst at off; it returns how many it moved.
func readWriteAt(dst, src int, buf []byte, off int64) (int, error) {
	n, err := unix.Pread(src, buf, off)
	if err != nil || n == 0 {
		return n, err
	}
	for w := 0; w < n; {
		m, err := unix.Pwrite(dst, buf[w:n], off+int64(w))
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return w, err
		}
		w += m
	}
	return n, nil
}
