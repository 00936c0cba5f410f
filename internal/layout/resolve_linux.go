package layout

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Use says what a directory is resolved for: it decides what Resolve
// accepts.
type Use int

// The uses of Resolve.
const (
	// ForTransaction: the directory must exist and be a directory, not /,
	// not a mount point (its shadow must live beside it, on its file
	// system; the root of a btrfs subvolume that is not mounted is no
	// mount point), on a file system mounted read-write, in a parent this
	// process may write (txn.Begin).
	ForTransaction Use = iota
	// ForLock: a directory that exists must be a directory; one that does
	// not is accepted when its parent holds its journal (a crash in a
	// rollback's exchange can leave the directory's name empty), so that
	// the caller can say it needs recovery (treetx lock).
	ForLock
	// ForRecovery: a directory that does not exist is accepted when its
	// parent does (recover, status, gc).
	ForRecovery
)

// ResolveOptions configures Resolve.
type ResolveOptions struct {
	Use Use
	// NoFollow (with ForRecovery) takes the path as it is, made absolute,
	// in a parent whose path holds no symlink (as recover.Scan returns
	// them), rather than resolving symlinks: a directory that is a symlink
	// is then refused with ErrNeedsPerson (treetx's names beside a symlink
	// were not made for it).
	NoFollow bool
}

// ErrNeedsPerson marks a state treetx refuses to act on: nothing is done,
// and a person must look (the "needs a person" of docs/protocol.md).
var ErrNeedsPerson = errors.New("needs a person")

// Resolve turns the directory argument arg into treetx's names for the
// directory it names, or says why it cannot, as o says. A symlink is
// resolved once, here (but with NoFollow): the transaction, its lock and its
// names are those of the directory it points to, so every path to one
// directory shares one lock.
func Resolve(arg string, o ResolveOptions) (Names, error) {
	if arg == "" {
		return Names{}, errors.New("no directory given")
	}
	abs, err := filepath.Abs(arg)
	if err != nil {
		return Names{}, fmt.Errorf("%s: %w", arg, err)
	}
	path, err := resolvePath(arg, abs, o)
	if err != nil {
		return Names{}, err
	}
	if o.Use != ForRecovery {
		var st unix.Stat_t
		err := unix.Stat(path, &st)
		switch {
		case err == nil && st.Mode&unix.S_IFMT != unix.S_IFDIR:
			return Names{}, fmt.Errorf("%s: not a directory", arg)
		case err != nil && o.Use == ForTransaction:
			return Names{}, fmt.Errorf("%s: %w", path, err)
		}
	}
	if path == "/" {
		switch o.Use {
		case ForTransaction:
			return Names{}, errors.New("/: the root directory has no parent to keep a shadow in")
		case ForLock:
			return Names{}, errors.New("/: the root directory has no parent to keep a lock in")
		}
		return Names{}, errors.New("/: the root directory has no parent, so treetx keeps nothing for it")
	}
	n, err := NamesFor(path)
	if err != nil || o.Use != ForTransaction {
		return n, err
	}
	return n, checkTransactable(n)
}

// resolvePath is the absolute path abs (of arg) with symlinks resolved, or
// why there is none, as o says.
func resolvePath(arg, abs string, o ResolveOptions) (string, error) {
	if o.NoFollow && o.Use == ForRecovery {
		if fi, err := os.Lstat(abs); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
			return "", fmt.Errorf("%s: %w: it is a symlink, and treetx's names beside it were not made for it (treetx keeps them beside the directory a symlink points to)", abs, ErrNeedsPerson)
		}
		return abs, nil
	}
	real, err := filepath.EvalSymlinks(abs)
	if err == nil {
		return real, nil
	}
	switch o.Use {
	case ForTransaction:
		if errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("%s: no such directory", arg)
		}
		return "", fmt.Errorf("%s: %w", arg, err)
	case ForLock:
		real, err := inParent(abs)
		if err == nil {
			var n Names
			if n, err = NamesFor(real); err == nil {
				_, err = os.Lstat(n.Path(n.Journal))
			}
		}
		if err != nil {
			return "", fmt.Errorf("%s: no such directory", arg)
		}
		return real, nil
	}
	real, err = inParent(abs)
	if err != nil {
		return "", fmt.Errorf("%s: no such directory, nor a parent holding treetx's names for it", arg)
	}
	return real, nil
}

// inParent resolves the path abs of a directory that does not exist: its
// parent with symlinks resolved, which must be a directory, and its own base
// name.
func inParent(abs string) (string, error) {
	parent, err := filepath.EvalSymlinks(filepath.Dir(abs))
	if err != nil {
		return "", err
	}
	if fi, err := os.Stat(parent); err != nil || !fi.IsDir() {
		return "", os.ErrNotExist
	}
	return filepath.Join(parent, filepath.Base(abs)), nil
}

// checkTransactable refuses what a transaction cannot run on: a mount
// point (but the root of a btrfs subvolume, which has a device number of
// its own without being one: its shadow is a snapshot), a read-only file system, a parent this process may not write.
func checkTransactable(n Names) error {
	var st, pst unix.Stat_t
	if err := unix.Stat(n.Dir, &st); err != nil {
		return fmt.Errorf("%s: %w", n.Dir, err)
	}
	if err := unix.Stat(n.Parent, &pst); err != nil {
		return fmt.Errorf("%s: %w", n.Parent, err)
	}
	if st.Dev != pst.Dev && !isSubvolumeRoot(n.Dir) || isMountPoint(n.Dir) {
		return fmt.Errorf("%s: a mount point: its shadow must live on its own file system, beside it; use a directory inside the mount", n.Dir)
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(n.Parent, &sfs); err != nil {
		return fmt.Errorf("%s: %w", n.Parent, err)
	}
	if sfs.Flags&unix.ST_RDONLY != 0 {
		return fmt.Errorf("%s: on a read-only file system", n.Dir)
	}
	if err := unix.Access(n.Parent, unix.W_OK|unix.X_OK); err != nil {
		return fmt.Errorf("%s: parent directory not writable (%v): treetx keeps its lock, journal and shadow there", n.Parent, err)
	}
	return nil
}

// isMountPoint reports whether dir is a mount point in this mount namespace
// (a bind mount of a directory of the same file system included).
func isMountPoint(dir string) bool {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && unescapeMount(fields[4]) == dir {
			return true
		}
	}
	return false
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space...).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v byte
			ok := true
			for _, c := range s[i+1 : i+4] {
				if c < '0' || c > '7' {
					ok = false
					break
				}
				v = v*8 + byte(c-'0')
			}
			if ok {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
