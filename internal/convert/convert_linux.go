// Package convert turns a directory on btrfs into a subvolume in place,
// under the directory's lock, so that a transaction on it can use a
// snapshot as its shadow (docs/btrfs.md).
//
// A directory cannot become a subvolume: a new subvolume is made beside
// it, the tree is copied into it (file data as clones, which share every
// block: no data is written), checked, made durable, and put in the
// directory's place with one atomic exchange of names; the old tree is
// then deleted. For DIR = P/N, with T = P/.#treetx.N:
//
//	V1  lock T.lock exclusive (through T.gate), as a transaction does
//	V2  look at what an earlier run left (table below) and finish or undo it
//	V3  create the subvolume T.converting (mode 0700 while it is filled)
//	V4  copy DIR into it: directories, clones of regular files, symlinks,
//	    device files, FIFOs and sockets, hard links within DIR as hard
//	    links; owner, mode, extended attributes (ACLs), file attributes
//	    (chattr: nodatacow, noatime...), atime and mtime; each directory's
//	    after its entries, the root's last
//	V5  compare the copy with DIR, entry by entry
//	V6  syncfs(P): the copy is durable
//	V7  renameat2(DIR, T.converting, RENAME_EXCHANGE); fsync(P) (on btrfs a
//	    transaction commit, since a subvolume is involved)
//	V8  rename T.converting (now the old tree) to T.removing.ID, NOREPLACE;
//	    fsync(P)
//	V9  delete T.removing.ID
//	V10 release the lock
//
// What a crash leaves (the lock is then free), and what the next run of
// Convert does with it, by what stands at T.converting and at DIR:
//
//	T.converting        DIR          how                       next run
//	none                directory    before V3 was durable     converts
//	subvolume           directory    in V3..V7, before the     deletes T.converting
//	                                 exchange was durable      (it is only a copy),
//	                                                           converts
//	directory           subvolume    after V7, before V8       V8, V9
//	                                 was durable
//	none, T.removing.ID subvolume    in V9                     deletes T.removing.ID
//	none                subvolume    done                      nothing (Already)
//
// Anything else at T.converting (a symlink, a file, a directory beside a
// directory, a subvolume beside a subvolume, one of another owner) was not
// made by Convert: ErrNeedsPerson, nothing done. A power cut cannot leave
// another state: each step that depends on an earlier one follows a
// syncfs or fsync of P, and on btrfs each of those commits a transaction,
// which reaches the disk whole or not at all.
//
// What is not kept: inode numbers, ctimes and birth times (new inodes);
// hard links between DIR and files outside it (the file in DIR becomes a
// clone of its own, listed in Result.LinkedOutside). Files with the
// immutable or append-only attribute are refused (they could not be
// deleted with the old tree). Writers that do not take DIR's lock must be
// stopped: what they write into DIR during V4..V5 makes V5 fail (nothing
// changed: run again), but a write between V5 and V7 would be lost.
package convert

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/btrfs"
	"github.com/treetx/treetx/internal/layout"
	"github.com/treetx/treetx/internal/safeopen"
	"github.com/treetx/treetx/lock"
	"github.com/treetx/treetx/snapshot"
)

// Errors callers branch on.
var (
	// ErrNotBtrfs: DIR is not on a btrfs file system.
	ErrNotBtrfs = errors.New("not on btrfs")
	// ErrNested: DIR holds a nested subvolume or a mount point, which a
	// snapshot of DIR would not hold.
	ErrNested = errors.New("holds a nested subvolume or mount point")
	// ErrNeedsRecovery: a transaction on DIR is unfinished (its journal or
	// shadow is there); run treetx recover DIR first.
	ErrNeedsRecovery = errors.New("needs recovery")
	// ErrNeedsPerson: something under T.converting was not made by
	// Convert; it is left as it is.
	ErrNeedsPerson = errors.New("needs a person")
	// ErrChanged: DIR changed while it was copied (someone writes it
	// without taking its lock); nothing was changed, run again.
	ErrChanged = errors.New("changed while it was copied")
	// ErrUnsupported: DIR holds something a copy cannot keep (an immutable
	// or append-only file, another user's file when not run as root).
	ErrUnsupported = errors.New("cannot be copied faithfully")
)

// Options configures Convert.
type Options struct {
	// LockTimeout bounds the wait for DIR's lock, as lock.Options.Timeout
	// does: negative waits until it is had, zero tries once.
	LockTimeout time.Duration
	// Command is recorded in the lock file as the holder; os.Args if nil.
	Command []string
	// Logger receives a debug line per step ("step" V1..V10); nil
	// discards.
	Logger *slog.Logger
	// Step, if set, is called after every change Convert makes to the file
	// system, with the step's ID (V4 once per entry copied): the crash
	// tests kill the process there.
	Step func(step string)
}

// Result says what Convert did.
type Result struct {
	// Dir is the directory, absolute with symlinks resolved.
	Dir string
	// Already: DIR was already the root of a subvolume, and nothing of an
	// earlier run was left to finish.
	Already bool
	// Converted: this run made DIR a subvolume (the exchange, V7).
	Converted bool
	// Finished says what an interrupted earlier run had left and what was
	// done with it ("" if nothing).
	Finished string
	// Entries, Clones, Copies count the entries copied, the regular files
	// cloned, and those whose data had to be copied.
	Entries, Clones, Copies int64
	// LinkedOutside lists files (relative to Dir) that had hard links
	// outside DIR: their copy in the subvolume is a file of its own.
	LinkedOutside []string
}

// names are the paths Convert uses beside DIR.
type names struct {
	layout.Names
	converting string // T.converting
}

// newID returns a random transaction-style id (16 hex digits).
func newID() (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("convert: id: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// converter is one run of Convert.
type converter struct {
	n    names
	pfd  int
	log  *slog.Logger
	step func(string)
	res  *Result
}

func (c *converter) did(step, what, path string) {
	c.log.Debug(what, "step", step, "path", path)
	if c.step != nil {
		c.step(step)
	}
}

// Convert makes dir (a symlink is resolved once) a btrfs subvolume holding
// the same tree, as the package documentation describes. A dir that is
// already a subvolume's root is left alone (Result.Already). On error
// before the exchange, dir is as it was and nothing of Convert's is left
// beside it (but its lock file); after it, dir is the subvolume and the
// error says what could not be deleted.
func Convert(ctx context.Context, dir string, opts Options) (*Result, error) {
	n, err := resolve(dir)
	if err != nil {
		return nil, err
	}
	c := &converter{n: n, pfd: -1, log: opts.Logger, step: opts.Step, res: &Result{Dir: n.Dir}}
	if c.log == nil {
		c.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if c.pfd, err = safeopen.OpenDir(n.Parent); err != nil {
		return nil, fmt.Errorf("convert: %w", err)
	}
	defer unix.Close(c.pfd)
	onBtrfs, err := btrfs.IsBtrfs(c.pfd)
	if err != nil {
		return nil, fmt.Errorf("convert %s: %w", n.Dir, err)
	}
	if !onBtrfs {
		return nil, fmt.Errorf("convert %s: %w (it is on %s): only a btrfs directory can become a subvolume", n.Dir, ErrNotBtrfs, fsName(c.pfd))
	}
	// Done already, with nothing left: no need for the lock (nor for
	// the right to write P).
	if isRoot, err := btrfs.IsSubvolumeRootAt(c.pfd, n.Base); err == nil && isRoot && !c.leftovers() {
		c.res.Already = true
		return c.res, nil
	}
	cmd := opts.Command
	if cmd == nil {
		cmd = os.Args
	}
	lk, err := lock.Acquire(ctx, n.Path(n.Lock), lock.Options{
		Mode: lock.Exclusive, Timeout: opts.LockTimeout, Gate: n.Path(n.Gate), Self: lock.Holder{Command: cmd},
	})
	if err != nil {
		return nil, err
	}
	c.log.Debug("locked", "step", "V1", "path", n.Path(n.Lock))
	err = c.run(ctx)
	if rerr := lk.Release(); rerr != nil {
		err = errors.Join(err, rerr)
	}
	c.log.Debug("released", "step", "V10", "path", n.Path(n.Lock))
	return c.res, err
}

// resolve finds DIR's names, refusing what Convert cannot work on.
func resolve(dir string) (names, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return names{}, fmt.Errorf("convert %s: %w", dir, err)
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return names{}, fmt.Errorf("convert %s: %w", dir, err)
	}
	if real == "/" {
		return names{}, errors.New("convert /: the root directory has no parent to build the subvolume in")
	}
	var st unix.Stat_t
	if err := unix.Stat(real, &st); err != nil {
		return names{}, fmt.Errorf("convert %s: %w", real, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return names{}, fmt.Errorf("convert %s: not a directory", dir)
	}
	tn, err := layout.NamesFor(real)
	if err != nil {
		return names{}, fmt.Errorf("convert: %w", err)
	}
	return names{Names: tn, converting: tn.Converting()}, nil
}

// run is Convert under the lock: V2 to V9.
func (c *converter) run(ctx context.Context) error {
	n := c.n
	// V2: a transaction's leftovers come first: recovery's to handle.
	for _, name := range []string{n.Journal, n.Incomplete, n.Complete} {
		if _, err := os.Lstat(n.Path(name)); err == nil {
			return fmt.Errorf("convert %s: %w: %s is there; run: treetx recover %s", n.Dir, ErrNeedsRecovery, n.Path(name), n.Dir)
		}
	}
	dirRoot, err := c.isRoot(n.Base, n.Dir)
	if err != nil {
		return err
	}
	var dst unix.Stat_t
	switch err := safeopen.Lstat(c.pfd, n.converting, &dst); {
	case errors.Is(err, unix.ENOENT):
		if dirRoot {
			// Only a removal tree of an interrupted V9 can be left.
			if err := c.removeLeftovers(); err != nil {
				return err
			}
			c.res.Already = c.res.Finished == ""
			return nil
		}
	case err != nil:
		return fmt.Errorf("convert: stat %s: %w", n.Path(n.converting), err)
	default:
		if err := c.finish(dirRoot, &dst); err != nil {
			return err
		}
		if dirRoot {
			return nil
		}
	}
	return c.convert(ctx)
}

// isRoot reports whether name in P (at path) is a subvolume's root.
func (c *converter) isRoot(name, path string) (bool, error) {
	ok, err := btrfs.IsSubvolumeRootAt(c.pfd, name)
	if err != nil {
		return false, fmt.Errorf("convert %s: %w", path, err)
	}
	return ok, nil
}

// finish finishes or undoes what an earlier run left at T.converting (st).
func (c *converter) finish(dirRoot bool, st *unix.Stat_t) error {
	n := c.n
	path := n.Path(n.converting)
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return fmt.Errorf("convert %s: %w: %s is %s, not what convert makes; move it away", n.Dir, ErrNeedsPerson, path, safeopen.TypeName(st.Mode))
	}
	convRoot, err := c.isRoot(n.converting, path)
	if err != nil {
		return err
	}
	var dirSt unix.Stat_t
	if err := safeopen.Lstat(c.pfd, n.Base, &dirSt); err != nil {
		return fmt.Errorf("convert: stat %s: %w", n.Dir, err)
	}
	switch {
	case convRoot && !dirRoot:
		// Interrupted before the exchange: T.converting is a copy,
		// perhaps partial. Only one the caller or DIR's owner owns.
		if st.Uid != uint32(os.Geteuid()) && st.Uid != dirSt.Uid {
			return fmt.Errorf("convert %s: %w: %s is a subvolume owned by uid %d, neither yours nor %s's owner's; move it away", n.Dir, ErrNeedsPerson, path, st.Uid, n.Dir)
		}
		if err := c.deleteCopy("V2"); err != nil {
			return err
		}
		c.res.Finished = "the unfinished copy an interrupted conversion left was deleted"
		return nil
	case !convRoot && dirRoot:
		// Interrupted after the exchange: T.converting is the old tree,
		// which DIR's copy replaced; its owner is DIR's.
		if st.Uid != dirSt.Uid {
			return fmt.Errorf("convert %s: %w: %s is a directory owned by uid %d, not by %s's owner; move it away", n.Dir, ErrNeedsPerson, path, st.Uid, n.Dir)
		}
		if err := c.dropOld(); err != nil {
			return err
		}
		c.res.Finished = "an interrupted conversion was finished: the old tree was deleted"
		return nil
	}
	what := "a plain directory beside a plain directory"
	if convRoot {
		what = "a subvolume beside a subvolume"
	}
	return fmt.Errorf("convert %s: %w: %s is %s, not a state convert leaves; move it away", n.Dir, ErrNeedsPerson, path, what)
}

// convert is V3..V9 on a plain directory.
func (c *converter) convert(ctx context.Context) (err error) {
	n := c.n
	// V3
	if err := btrfs.CreateSubvolume(c.pfd, n.converting); err != nil {
		return fmt.Errorf("convert %s: V3: %w", n.Dir, err)
	}
	c.did("V3", "create subvolume", n.Path(n.converting))
	exchanged := false
	defer func() {
		if err != nil && !exchanged {
			if derr := c.deleteCopy("V4"); derr != nil {
				err = errors.Join(err, fmt.Errorf("and the copy could not be deleted (treetx convert %s deletes it): %w", n.Dir, derr))
			}
		}
	}()
	if err := unix.Fchmodat(c.pfd, n.converting, 0o700, 0); err != nil {
		return fmt.Errorf("convert: V3: chmod %s: %w", n.Path(n.converting), err)
	}
	// V4, V5
	// One call of Step per entry copied; no log line.
	onEntry := func() {
		if c.step != nil {
			c.step("V4")
		}
	}
	cp, err := newCopier(c.pfd, n.Base, n.converting, n.Dir, n.Path(n.converting), onEntry)
	if err != nil {
		return err
	}
	defer cp.close()
	if err := cp.copyTree(ctx); err != nil {
		return err
	}
	c.res.Entries, c.res.Clones, c.res.Copies = cp.entries, cp.clones, cp.copies
	c.log.Debug("copied", "step", "V4", "path", n.Dir, "entries", cp.entries, "clones", cp.clones, "copies", cp.copies)
	if err := cp.verify(ctx); err != nil {
		return err
	}
	c.res.LinkedOutside = cp.linkedOutside()
	c.log.Debug("verified", "step", "V5", "path", n.Path(n.converting))
	// V6
	if err := unix.Syncfs(c.pfd); err != nil {
		return fmt.Errorf("convert: V6: syncfs %s: %w", n.Parent, err)
	}
	c.did("V6", "syncfs", n.Parent)
	// V7
	if err := unix.Renameat2(c.pfd, n.Base, c.pfd, n.converting, unix.RENAME_EXCHANGE); err != nil {
		return fmt.Errorf("convert: V7: exchange %s and %s: %w", n.Dir, n.Path(n.converting), err)
	}
	exchanged, c.res.Converted = true, true
	c.did("V7", "exchange", n.Dir)
	if err := unix.Fsync(c.pfd); err != nil {
		return fmt.Errorf("convert %s: converted, but V7: fsync %s: %w", n.Dir, n.Parent, err)
	}
	c.did("V7", "fsync", n.Parent)
	return c.dropOld()
}

// dropOld is V8 and V9: the old tree at T.converting is named for removal
// and deleted.
func (c *converter) dropOld() error {
	n := c.n
	var removing string
	for try := 0; ; try++ {
		id, err := newID()
		if err != nil {
			return err
		}
		removing = n.Removing(id)
		err = unix.Renameat2(c.pfd, n.converting, c.pfd, removing, unix.RENAME_NOREPLACE)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EEXIST) || try >= 3 {
			return fmt.Errorf("convert %s: converted, but V8: rename %s to %s: %w", n.Dir, n.Path(n.converting), removing, err)
		}
	}
	c.did("V8", "rename", n.Path(removing))
	if err := unix.Fsync(c.pfd); err != nil {
		return fmt.Errorf("convert %s: converted, but V8: fsync %s: %w", n.Dir, n.Parent, err)
	}
	c.did("V8", "fsync", n.Parent)
	if err := snapshot.RemoveWith(n.Parent, removing, snapshot.RemoveOptions{}); err != nil {
		return fmt.Errorf("convert %s: converted, but V9: delete the old tree %s (treetx recover %s deletes it): %w", n.Dir, n.Path(removing), n.Dir, err)
	}
	c.did("V9", "delete", n.Path(removing))
	return nil
}

// deleteCopy deletes the subvolume T.converting (a copy, whole or not),
// with the ioctl where this user may, else entry by entry and then rmdir.
func (c *converter) deleteCopy(step string) error {
	n := c.n
	err := btrfs.DeleteSubvolume(c.pfd, n.converting)
	if errors.Is(err, btrfs.ErrNotEmpty) {
		err = snapshot.RemoveWith(n.Parent, n.converting, snapshot.RemoveOptions{})
	}
	if errors.Is(err, unix.ENOENT) {
		err = nil
	}
	if err != nil {
		return fmt.Errorf("convert: %s: delete %s: %w", step, n.Path(n.converting), err)
	}
	c.did(step, "delete subvolume", n.Path(n.converting))
	return nil
}

// removeLeftovers deletes the removal trees beside DIR whose root the
// caller, root or DIR's owner owns (an interrupted V9 leaves one); others
// are left to treetx recover, which deletes them as their owner.
func (c *converter) removeLeftovers() error {
	n := c.n
	ents, err := safeopen.ReadNames(c.pfd, n.Parent)
	if err != nil {
		return fmt.Errorf("convert: %w", err)
	}
	var dirSt unix.Stat_t
	if err := safeopen.Lstat(c.pfd, n.Base, &dirSt); err != nil {
		return fmt.Errorf("convert: stat %s: %w", n.Dir, err)
	}
	for _, name := range ents {
		if n.Classify(name) != layout.KindRemoving {
			continue
		}
		var st unix.Stat_t
		if err := safeopen.Lstat(c.pfd, name, &st); err != nil {
			continue
		}
		if st.Uid != 0 && st.Uid != uint32(os.Geteuid()) && st.Uid != dirSt.Uid {
			continue
		}
		if err := snapshot.RemoveWith(n.Parent, name, snapshot.RemoveOptions{}); err != nil {
			return fmt.Errorf("convert %s: V9: delete %s: %w", n.Dir, n.Path(name), err)
		}
		c.did("V9", "delete", n.Path(name))
		c.res.Finished = "an interrupted conversion was finished: the old tree was deleted"
	}
	return nil
}

// leftovers reports whether P holds T.converting or a removal tree of
// DIR's (or cannot be read).
func (c *converter) leftovers() bool {
	ents, err := safeopen.ReadNames(c.pfd, c.n.Parent)
	if err != nil {
		return true
	}
	for _, name := range ents {
		if name == c.n.converting || c.n.Classify(name) == layout.KindRemoving {
			return true
		}
	}
	return false
}

// fsName names the file system holding fd, for a refusal.
func fsName(fd int) string {
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(fd, &sfs); err != nil {
		return "an unknown file system"
	}
	switch sfs.Type {
	case unix.EXT4_SUPER_MAGIC:
		return "ext2/3/4"
	case unix.XFS_SUPER_MAGIC:
		return "XFS"
	case unix.TMPFS_MAGIC:
		return "tmpfs"
	case unix.NFS_SUPER_MAGIC:
		return "NFS"
	case unix.OVERLAYFS_SUPER_MAGIC:
		return "overlayfs"
	}
	return fmt.Sprintf("a file system of type %#x", sfs.Type)
}
