// Package treeimage captures a directory tree into a comparable in-memory
// image (types, permission bits, ownership, content hashes, symlink targets
// and modification times) so that tests can check two trees byte for byte.
//
// Capture never follows symbolic links. Link counts and inode numbers are
// deliberately left out, since they legitimately differ between a tree and
// its copy.
package treeimage

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/karrick/godirwalk"
)

// Entry describes one entry of a tree, relative to the tree's root.
type Entry struct {
	// Path is slash-separated and relative to the root; "." is the root.
	Path string
	// Type is one of "dir", "file", "symlink", "fifo", "socket",
	// "chardev" or "blockdev".
	Type string
	// Mode holds the permission bits plus ModeSetuid, ModeSetgid and
	// ModeSticky; the type bits are not included.
	Mode fs.FileMode
	// UID and GID are the numeric owner and group.
	UID, GID int
	// Size is the content length in bytes (files only).
	Size int64
	// Hash is the lowercase hex SHA-256 of the content (files only).
	Hash string
	// Target is the link target as stored (symlinks only).
	Target string
	// MtimeNs is the modification time in nanoseconds since the Unix
	// epoch for files, directories and symlinks; 0 for other types or
	// when ignored through Options.
	MtimeNs int64
}

// Image is a whole tree, sorted by Path.
type Image []Entry

// Options control Capture.
type Options struct {
	// Ignore, if set, is called with the slash path of each entry below
	// the root (the root itself is always captured). Entries for which it
	// returns true are left out, and so are the subtrees of such
	// directories.
	Ignore func(path string) bool
	// IgnoreDirMtime records the mtime of directories as 0.
	IgnoreDirMtime bool
	// IgnoreFileMtime records the mtime of every non-directory entry
	// (regular files and symlinks) as 0.
	IgnoreFileMtime bool
}

const modeBits = fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky

// Capture records the tree rooted at root. The root is examined with lstat
// and must be a directory, not a symlink to one; no symlink is followed.
func Capture(root string, opts Options) (Image, error) {
	fi, err := os.Lstat(root)
	if err != nil {
		return nil, fmt.Errorf("treeimage: capture: %w", err)
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		return nil, fmt.Errorf("treeimage: capture %s: root is a symlink", root)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("treeimage: capture %s: root is not a directory", root)
	}
	c := capturer{root: root, opts: opts}
	// A walk by path is what a test image needs, and safe here: the trees
	// are the tests' own. (Root's scan and gc walk by descriptor instead:
	// see recover/scan_linux.go.)
	err = godirwalk.Walk(root, &godirwalk.Options{
		Unsorted:            true, // sorted below
		FollowSymbolicLinks: false,
		Callback: func(abs string, de *godirwalk.Dirent) error {
			rel, err := filepath.Rel(root, abs)
			if err != nil {
				return err
			}
			rel = filepath.ToSlash(rel)
			if rel != "." && c.opts.Ignore != nil && c.opts.Ignore(rel) {
				return godirwalk.SkipThis
			}
			efi, err := os.Lstat(abs)
			if err != nil {
				return fmt.Errorf("treeimage: capture: %w", err)
			}
			e, err := c.entry(abs, rel, efi)
			if err != nil {
				return err
			}
			c.img = append(c.img, e)
			return nil
		},
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(c.img, byPath)
	return c.img, nil
}

type capturer struct {
	root string
	opts Options
	img  Image
}

func (c *capturer) entry(abs, rel string, fi fs.FileInfo) (Entry, error) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return Entry{}, fmt.Errorf("treeimage: capture %s: no stat data", abs)
	}
	e := Entry{Path: rel, Mode: fi.Mode() & modeBits, UID: int(st.Uid), GID: int(st.Gid)}
	mtime := fi.ModTime().UnixNano()
	switch t := fi.Mode().Type(); t {
	case 0:
		e.Type = "file"
		size, sum, err := hashFile(abs)
		if err != nil {
			return Entry{}, err
		}
		e.Size, e.Hash = size, sum
		if !c.opts.IgnoreFileMtime {
			e.MtimeNs = mtime
		}
	case fs.ModeDir:
		e.Type = "dir"
		if !c.opts.IgnoreDirMtime {
			e.MtimeNs = mtime
		}
	case fs.ModeSymlink:
		e.Type = "symlink"
		target, err := os.Readlink(abs)
		if err != nil {
			return Entry{}, fmt.Errorf("treeimage: capture: %w", err)
		}
		e.Target = target
		if !c.opts.IgnoreFileMtime {
			e.MtimeNs = mtime
		}
	case fs.ModeNamedPipe:
		e.Type = "fifo"
	case fs.ModeSocket:
		e.Type = "socket"
	case fs.ModeDevice | fs.ModeCharDevice:
		e.Type = "chardev"
	case fs.ModeDevice:
		e.Type = "blockdev"
	default:
		return Entry{}, fmt.Errorf("treeimage: capture %s: unsupported file type %v", abs, t)
	}
	return e, nil
}

func hashFile(name string) (int64, string, error) {
	f, err := os.Open(name)
	if err != nil {
		return 0, "", fmt.Errorf("treeimage: capture: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return 0, "", fmt.Errorf("treeimage: capture: read %s: %w", name, err)
	}
	return n, hex.EncodeToString(h.Sum(nil)), nil
}

func byPath(a, b Entry) int { return cmp.Compare(a.Path, b.Path) }

// sorted returns a sorted copy of a, so that methods accept images built by
// hand in any order without modifying them.
func (a Image) sorted() Image {
	s := slices.Clone(a)
	slices.SortStableFunc(s, byPath)
	return s
}

// Diff lists the differences between a and b in path order, one
// human-readable line each, for example "a/b.txt: mode 0644 != 0600",
// "only in first: x/y" or "only in second: z". Values are shown as
// a's != b's. It returns nil when the images are equal.
func (a Image) Diff(b Image) []string {
	return diff(a, b, "first", "second")
}

func diff(a, b Image, labelA, labelB string) []string {
	a, b = a.sorted(), b.sorted()
	var out []string
	for len(a) > 0 || len(b) > 0 {
		switch {
		case len(b) == 0 || len(a) > 0 && a[0].Path < b[0].Path:
			out = append(out, fmt.Sprintf("only in %s: %s", labelA, showPath(a[0].Path)))
			a = a[1:]
		case len(a) == 0 || b[0].Path < a[0].Path:
			out = append(out, fmt.Sprintf("only in %s: %s", labelB, showPath(b[0].Path)))
			b = b[1:]
		default:
			out = append(out, diffEntry(a[0], b[0])...)
			a, b = a[1:], b[1:]
		}
	}
	return out
}

func diffEntry(x, y Entry) []string {
	p := showPath(x.Path)
	if x.Type != y.Type {
		return []string{fmt.Sprintf("%s: type %s != %s", p, x.Type, y.Type)}
	}
	var out []string
	add := func(field string, vx, vy any) {
		if vx != vy {
			out = append(out, fmt.Sprintf("%s: %s %v != %v", p, field, vx, vy))
		}
	}
	add("mode", octal(x.Mode), octal(y.Mode))
	add("uid", x.UID, y.UID)
	add("gid", x.GID, y.GID)
	add("size", x.Size, y.Size)
	add("sha256", x.Hash, y.Hash)
	add("target", strconv.Quote(x.Target), strconv.Quote(y.Target))
	add("mtime", showTime(x.MtimeNs), showTime(y.MtimeNs))
	return out
}

// Equal reports whether a and b describe the same tree.
func (a Image) Equal(b Image) bool {
	return len(a.Diff(b)) == 0
}

// String renders one line per entry, in path order, for debugging.
func (a Image) String() string {
	var sb strings.Builder
	for _, e := range a.sorted() {
		fmt.Fprintf(&sb, "%s %s %s %d:%d", showPath(e.Path), e.Type, octal(e.Mode), e.UID, e.GID)
		switch e.Type {
		case "file":
			fmt.Fprintf(&sb, " size=%d sha256=%s", e.Size, e.Hash)
		case "symlink":
			fmt.Fprintf(&sb, " -> %q", e.Target)
		}
		if e.MtimeNs != 0 {
			fmt.Fprintf(&sb, " mtime=%s", showTime(e.MtimeNs))
		}
		sb.WriteByte('\n')
	}
	return sb.String()
}

// Hash returns the hex SHA-256 of a canonical encoding of the image. Equal
// images have equal hashes regardless of the order of their entries.
func (a Image) Hash() string {
	h := sha256.New()
	io.WriteString(h, "treeimage v1\n")
	for _, e := range a.sorted() {
		fmt.Fprintf(h, "%q %q %o %d %d %d %q %q %d\n",
			e.Path, e.Type, uint32(e.Mode), e.UID, e.GID, e.Size, e.Hash, e.Target, e.MtimeNs)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// octal renders m the way chmod(1) spells it, e.g. "2755".
func octal(m fs.FileMode) string {
	v := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		v |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		v |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		v |= 0o1000
	}
	return fmt.Sprintf("%04o", v)
}

// showPath quotes p only when it holds characters that need escaping, such
// as a newline, so that every difference stays on one line.
func showPath(p string) string {
	if q := strconv.Quote(p); q[1:len(q)-1] != p {
		return q
	}
	return p
}

func showTime(ns int64) string {
	return time.Unix(0, ns).UTC().Format(time.RFC3339Nano)
}
