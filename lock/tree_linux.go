package lock

// Hierarchical locks: a transaction or reader on a tree excludes every
// transaction on a tree inside it or containing it.
//
// The lock file beside a tree (an flock(2) lock) orders the users of that one
// tree. Trees that overlap meet on the directories they share instead: every
// directory from the root of the tree's mount down to the tree carries, on
// its own inode, open file description (OFD) record locks (fcntl
// F_OFD_SETLK), one byte per kind of user, as multi-granularity locking does
// in databases (Gray et al., "Granularity of Locks and Degrees of Consistency
// in a Shared Data Base", 1976):
//
//	byte  held by                                              kind
//	0     a reader of a tree inside this directory             IS
//	1     a writer of a tree inside this directory             IX
//	2     a reader of this directory's tree                    S
//	3     a writer of this directory's tree                    X
//	4     a writer of this directory's tree waiting for        W
//	      those inside it to finish (writer fairness)
//
// A directory can only be opened for reading, so every one of these is a read
// lock, which never blocks another; a user announces its kind by taking its
// byte, then probes (F_OFD_GETLK with a write lock) the bytes its kind
// conflicts with:
//
//	kind  conflicts with
//	IS    X, W
//	IX    S, X, W
//	S     IX, X
//	X     IS, IX, S, X
//
// If a probe finds one, it drops what it took and tries again later. Since
// each user takes its byte before it probes, and the kernel orders lock
// operations on one inode, of two conflicting users at least one sees the
// other: they never both hold. A writer that waits keeps W, so that readers
// and writers of trees inside it that arrive meanwhile wait behind it.
//
// The kernel drops OFD locks when the last descriptor of their open file
// description closes: as with flock, a killed holder holds nothing, and a
// child given the descriptors (InheritableDirs) keeps them held.
//
// A directory this process may not open for reading (a 0711 home directory,
// say) is passed through but carries no lock: a tree rooted there is not seen
// by the trees inside it. Root reads every directory.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// The bytes of a directory's lock space; see the comment at the top of this
// file.
const (
	byteIS int64 = iota
	byteIX
	byteS
	byteX
	byteW
)

// conflicts lists, for each byte a user takes, the bytes it must not find
// taken by another.
var conflicts = [...][]int64{
	byteIS: {byteX, byteW},
	byteIX: {byteS, byteX, byteW},
	byteS:  {byteIX, byteX},
	byteX:  {byteIS, byteIX, byteS, byteX},
}

// kindName describes the holder of each byte, for error messages.
func kindName(b int64) string {
	switch b {
	case byteIS:
		return "a reader of a tree inside"
	case byteIX:
		return "a transaction on a tree inside"
	case byteS:
		return "a reader of"
	case byteX:
		return "a transaction on"
	default:
		return "a transaction waiting for"
	}
}

// chainDir is one directory of the chain from the root of the tree's mount
// down to the tree.
type chainDir struct {
	path     string
	name     string // its name in the previous directory of the chain
	fd       int
	dev, ino uint64
	lockable bool    // opened for reading, so it can carry locks
	held     []int64 // bytes taken through fd
}

// tree is the set of directory locks held for one Lock.
type tree struct {
	dir   string     // the tree, absolute
	chain []chainDir // from the mount root down to dir (or its parent, if dir is missing)
	// covers are other directories locked as the tree itself (Cover).
	covers []chainDir
}

// treeConflict reports a directory lock held by a user of an overlapping tree.
type treeConflict struct {
	dir  string // the directory whose byte was found taken
	b    int64  // the byte
	tree string // the tree being locked
}

func (c *treeConflict) Error() string {
	switch {
	case c.dir == c.tree:
		return kindName(c.b) + " " + c.dir
	case c.b == byteIS || c.b == byteIX:
		return kindName(c.b) + " " + c.dir
	default:
		return kindName(c.b) + " " + c.dir + ", which contains " + c.tree
	}
}

// openChain opens the directories from the root of dir's mount down to dir
// (down to its parent if dir is missing), each relative to the one above
// without following symlinks.
func openChain(dir string) (*tree, error) {
	if !filepath.IsAbs(dir) || filepath.Clean(dir) != dir {
		return nil, fmt.Errorf("tree %s: not an absolute, clean path", dir)
	}
	t := &tree{dir: dir}
	ok := false
	defer func() {
		if !ok {
			t.close()
		}
	}()
	fd, err := unix.Open("/", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("tree %s: open /: %w", dir, err)
	}
	if err := t.add("/", "", fd, true); err != nil {
		return nil, err
	}
	var names []string
	if dir != "/" {
		names = strings.Split(dir[1:], "/")
	}
	for i, name := range names {
		prev := t.chain[len(t.chain)-1]
		path := filepath.Join(prev.path, name)
		lockable := true
		fd, err := unix.Openat(prev.fd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
		if errors.Is(err, unix.EACCES) {
			lockable = false
			fd, err = unix.Openat(prev.fd, name, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		}
		if errors.Is(err, unix.ENOENT) && i == len(names)-1 {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("tree %s: open %s: %w", dir, path, err)
		}
		if err := t.add(path, name, fd, lockable); err != nil {
			return nil, err
		}
	}
	// Keep the chain from the last mount root down: no tree crosses a
	// mount, so no tree above it can contain this one.
	top := 0
	for i, d := range t.chain {
		var stx unix.Statx_t
		if err := unix.Statx(d.fd, "", unix.AT_EMPTY_PATH, unix.STATX_INO, &stx); err != nil {
			return nil, fmt.Errorf("tree %s: statx %s: %w", dir, d.path, err)
		}
		mountRoot := stx.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT != 0 && stx.Attributes&unix.STATX_ATTR_MOUNT_ROOT != 0
		if mountRoot || i > 0 && d.dev != t.chain[i-1].dev {
			top = i
		}
	}
	for _, d := range t.chain[:top] {
		unix.Close(d.fd)
	}
	t.chain = t.chain[top:]
	ok = true
	return t, nil
}

// add appends a directory opened as fd to the chain.
func (t *tree) add(path, name string, fd int, lockable bool) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return fmt.Errorf("tree %s: stat %s: %w", t.dir, path, err)
	}
	t.chain = append(t.chain, chainDir{path: path, name: name, fd: fd, dev: uint64(st.Dev), ino: st.Ino, lockable: lockable})
	return nil
}

// self returns the tree's own directory in the chain, or nil if it is
// missing.
func (t *tree) self() *chainDir {
	if d := &t.chain[len(t.chain)-1]; d.path == t.dir {
		return d
	}
	return nil
}

// ancestors returns the chain above the tree.
func (t *tree) ancestors() []chainDir {
	if t.self() != nil {
		return t.chain[:len(t.chain)-1]
	}
	return t.chain
}

// take takes byte b on d and probes the bytes b conflicts with. On a
// conflict it drops b again and reports the conflict.
func (t *tree) take(d *chainDir, b int64) error {
	if !d.lockable {
		return nil
	}
	if err := setByte(d.fd, b, unix.F_RDLCK); err != nil {
		return fmt.Errorf("tree %s: lock %s: %w", t.dir, d.path, err)
	}
	for _, c := range conflicts[b] {
		taken, err := probeByte(d.fd, c)
		if err != nil {
			setByte(d.fd, b, unix.F_UNLCK)
			return fmt.Errorf("tree %s: probe %s: %w", t.dir, d.path, err)
		}
		if taken {
			setByte(d.fd, b, unix.F_UNLCK)
			return &treeConflict{dir: d.path, b: c, tree: t.dir}
		}
	}
	d.held = append(d.held, b)
	return nil
}

// drop releases byte b on d if held.
func (t *tree) drop(d *chainDir, b int64) {
	for i, h := range d.held {
		if h == b {
			setByte(d.fd, b, unix.F_UNLCK)
			d.held = append(d.held[:i], d.held[i+1:]...)
			return
		}
	}
}

// dropAll releases every byte held, keeping the descriptors.
func (t *tree) dropAll() {
	for _, ds := range [][]chainDir{t.chain, t.covers} {
		for i := range ds {
			for _, b := range ds[i].held {
				setByte(ds[i].fd, b, unix.F_UNLCK)
			}
			ds[i].held = nil
		}
	}
}

// close releases everything and closes the descriptors.
func (t *tree) close() {
	t.dropAll()
	for _, ds := range [][]chainDir{t.chain, t.covers} {
		for _, d := range ds {
			unix.Close(d.fd)
		}
	}
	t.chain, t.covers = nil, nil
}

// valid reports whether every directory of the chain is still the one its
// name in the previous one names: a transaction on a directory above may
// have swapped it for its shadow while this one was being opened.
func (t *tree) valid() bool {
	for i := 1; i < len(t.chain); i++ {
		var st unix.Stat_t
		if err := unix.Fstatat(t.chain[i-1].fd, t.chain[i].name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return false
		}
		if uint64(st.Dev) != t.chain[i].dev || st.Ino != t.chain[i].ino {
			return false
		}
	}
	if t.self() == nil {
		// The tree is still missing.
		var st unix.Stat_t
		last := t.chain[len(t.chain)-1]
		return unix.Fstatat(last.fd, filepath.Base(t.dir), &st, unix.AT_SYMLINK_NOFOLLOW) != nil
	}
	return true
}

// intents takes the intention byte (IS for a shared lock, IX for an
// exclusive one) on every directory above the tree.
func (t *tree) intents(mode Mode) error {
	b := byteIX
	if mode == Shared {
		b = byteIS
	}
	anc := t.ancestors()
	for i := range anc {
		if err := t.take(&t.chain[i], b); err != nil {
			return err
		}
	}
	return nil
}

// node takes the tree's own byte (S or X) on its directory.
func (t *tree) node(mode Mode) error {
	d := t.self()
	if d == nil {
		return nil
	}
	b := byteX
	if mode == Shared {
		b = byteS
	}
	return t.take(d, b)
}

// acquireTree opens dir's chain and takes its intention locks, waiting as
// ctx allows (once: a single try). It retries from the start whenever the
// chain changed under it.
func acquireTree(ctx context.Context, dir string, mode Mode, once bool) (*tree, error) {
	for {
		t, err := openChain(dir)
		if err != nil {
			return nil, err
		}
		err = t.intents(mode)
		if err == nil && t.valid() {
			return t, nil
		}
		t.close()
		if err == nil {
			continue // the chain changed: open it again
		}
		if err := backoff(ctx, err, once); err != nil {
			return nil, err
		}
	}
}

// lockNode takes the tree's own lock on its directory, waiting as ctx
// allows. An exclusive one keeps W while it waits.
func (t *tree) lockNode(ctx context.Context, mode Mode, once bool) error {
	d := t.self()
	defer func() {
		if d != nil {
			t.drop(d, byteW)
		}
	}()
	for {
		err := t.node(mode)
		if err == nil {
			return nil
		}
		if mode == Exclusive && d != nil && d.lockable && len(d.held) == 0 {
			if err := setByte(d.fd, byteW, unix.F_RDLCK); err == nil {
				d.held = append(d.held, byteW)
			}
		}
		if err := backoff(ctx, err, once); err != nil {
			return err
		}
	}
}

// backoff waits a little before the next try after err, or returns err if
// there is to be none.
func backoff(ctx context.Context, err error, once bool) error {
	var c *treeConflict
	if !errors.As(err, &c) {
		return err
	}
	if once {
		return err
	}
	d := retryDelay + rand.N(retryDelay)
	select {
	case <-ctx.Done():
		if errors.Is(context.Cause(ctx), errTimeout) {
			return err
		}
		return fmt.Errorf("tree %s: wait for %s to finish: %w", c.tree, c.dir, ctx.Err())
	case <-time.After(d):
		return nil
	}
}

// cover takes the tree's own byte on another directory, opened as fd (the
// tree's shadow, which a rollback puts in the tree's place): users of trees
// inside it that find it there then wait too. fd is duplicated. Nothing can
// hold a conflicting byte on a directory the caller just made, so it does
// not wait.
func (t *tree) cover(fd int, mode Mode) error {
	nfd, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("tree %s: cover: duplicate descriptor: %w", t.dir, err)
	}
	b := byteX
	if mode == Shared {
		b = byteS
	}
	if err := setByte(nfd, b, unix.F_RDLCK); err != nil {
		unix.Close(nfd)
		return fmt.Errorf("tree %s: cover: %w", t.dir, err)
	}
	t.covers = append(t.covers, chainDir{fd: nfd, lockable: true, held: []int64{b}})
	return nil
}

// files returns copies of the descriptors that hold bytes, for a child.
func (t *tree) files() ([]*os.File, error) {
	var out []*os.File
	for _, ds := range [][]chainDir{t.chain, t.covers} {
		for _, d := range ds {
			if len(d.held) == 0 {
				continue
			}
			nfd, err := unix.FcntlInt(uintptr(d.fd), unix.F_DUPFD_CLOEXEC, 0)
			if err != nil {
				for _, f := range out {
					f.Close()
				}
				return nil, fmt.Errorf("tree %s: duplicate descriptor of %s: %w", t.dir, d.path, err)
			}
			out = append(out, os.NewFile(uintptr(nfd), d.path))
		}
	}
	return out, nil
}

// setByte takes (F_RDLCK) or releases (F_UNLCK) byte b of fd's lock space.
func setByte(fd int, b int64, typ int16) error {
	lk := unix.Flock_t{Type: typ, Whence: 0, Start: b, Len: 1}
	return unix.FcntlFlock(uintptr(fd), unix.F_OFD_SETLK, &lk)
}

// probeByte reports whether another open file description holds byte b of fd's
// lock space.
func probeByte(fd int, b int64) (bool, error) {
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: b, Len: 1}
	if err := unix.FcntlFlock(uintptr(fd), unix.F_OFD_GETLK, &lk); err != nil {
		return false, err
	}
	return lk.Type != unix.F_UNLCK, nil
}
