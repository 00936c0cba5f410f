package protocol

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/btrfs"
	"github.com/treetx/treetx/internal/layout"
)

// Snapshot mode (docs/protocol.md, "Snapshot mode"): where the directory is
// the root of a btrfs subvolume, the shadow is a writable snapshot of it,
// taken in B3 under the name Incomplete. B5 has nothing to do (no manifest,
// no watch, no copies: a snapshot shares nothing a write can reach), nor
// have C2, C6, R1 and R3; C7 deletes the subvolume with one call where this
// process may (snapshot.RemoveWith). The names, phases and renames are
// those of hard-link mode; the journal records the mode and the two
// subvolumes, by which recovery finds the trees (layout.Journal.HoldsShadow).

// Mode is how a transaction's shadow is made (Options.Mode): ModeAuto,
// ModeHardlink or ModeSnapshot.
type Mode = layout.Mode

// The modes Options.Mode takes.
const (
	ModeAuto     = layout.ModeAuto
	ModeHardlink = layout.ModeHardlink
	ModeSnapshot = layout.ModeSnapshot
)

// ErrMode marks a directory the mode asked for cannot be used on, or a
// snapshot cannot be taken of (nested subvolumes, --exclude).
var ErrMode = errors.New("cannot use this mode here")

// chooseMode decides, in B2, how the shadow of the directory is made, as
// opts.Mode asks and the directory allows, and logs it; for a snapshot it
// checks what a snapshot needs and records the mode in the journal. It
// returns the directory, open, when the mode is snapshot (the caller closes
// it), else -1.
func (tx *Tx) chooseMode(opts Options) (int, error) {
	n := tx.n
	mode, err := layout.ParseMode(string(opts.Mode))
	if err != nil {
		return -1, fmt.Errorf("%s: %w", n.Dir, err)
	}
	root, err := btrfs.IsSubvolumeRootAt(tx.pfd, n.Base)
	if err != nil {
		return -1, fmt.Errorf("B2: %s: %w", n.Dir, err)
	}
	switch {
	case mode == ModeHardlink && root:
		return -1, fmt.Errorf("%s: %w: the root of a btrfs subvolume, which hard links from its parent cannot reach; use --mode snapshot (or auto)", n.Dir, ErrMode)
	case mode == ModeSnapshot && !root:
		return -1, fmt.Errorf("%s: %w: --mode snapshot needs the root of a btrfs subvolume (treetx convert %s makes it one)", n.Dir, ErrMode, n.Dir)
	case !root:
		tx.log.Debug("mode", "mode", string(ModeHardlink), "dir", n.Dir)
		return -1, nil
	}
	if len(opts.Exclude) > 0 {
		return -1, fmt.Errorf("%s: %w: --exclude: a snapshot holds the whole subvolume and cannot leave entries out of the transaction", n.Dir, ErrMode)
	}
	fd, err := unix.Openat(tx.pfd, n.Base, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("B2: open %s: %w", n.Dir, err)
	}
	nested, err := btrfs.NestedSubvolumes(fd)
	if err == nil && len(nested) > 0 {
		err = fmt.Errorf("%s: %w: it holds %d nested subvolume(s) (ids %v), which a snapshot leaves out, so a rollback would lose them: make each a subvolume of its own tree, or move it out", n.Dir, ErrMode, len(nested), nested)
	}
	if err != nil {
		unix.Close(fd)
		return -1, err
	}
	tx.j.Mode = ModeSnapshot
	tx.log.Debug("mode", "mode", string(ModeSnapshot), "dir", n.Dir)
	return fd, nil
}

// beginSnapshot performs B3 to B8 in snapshot mode, dirfd being the
// directory, open.
func (tx *Tx) beginSnapshot(dirfd int) error {
	n := tx.n
	// Step: the shadow is a writable snapshot, under the name a shadow
	// has while no journal claims it (row 18 if the journal is lost).
	tx.step("B3", "snapshot", n.Incomplete)
	if err := btrfs.Via(tx.fs).Snapshot(dirfd, tx.pfd, n.Incomplete); err != nil {
		return fmt.Errorf("B3: snapshot %s as %s: %w", n.Dir, n.Path(n.Incomplete), err)
	}
	var st unix.Stat_t
	if err := unix.Fstatat(tx.pfd, n.Incomplete, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("B3: stat %s: %w", n.Path(n.Incomplete), err)
	}
	tx.j.Shadow = layout.IDOf(&st)
	sv, err := tx.subvols(dirfd, n.Incomplete)
	if err != nil {
		return err
	}
	tx.j.Subvols = sv
	if err := tx.cover(); err != nil {
		return err
	}
	if err := tx.setPhase("B4", layout.PhaseSnapshot); err != nil {
		return fmt.Errorf("B4: %w", err)
	}
	// B5: nothing to build.
	// Step: the snapshot is durable before it is named complete (the
	// kernel commits it at once; the protocol does not lean on it).
	tx.step("B6", "syncfs", n.Parent)
	if err := tx.fs.Syncfs(tx.pfd); err != nil {
		return fmt.Errorf("B6: make shadow durable: syncfs %s: %w", n.Parent, err)
	}
	tx.step("B7", "rename", n.Complete)
	if err := tx.fs.Renameat2(tx.pfd, n.Incomplete, tx.pfd, n.Complete, unix.RENAME_NOREPLACE); err != nil {
		return fmt.Errorf("B7: rename %s to %s: %w", n.Path(n.Incomplete), n.Complete, err)
	}
	if err := tx.fsyncParent("B7"); err != nil {
		return fmt.Errorf("B7: %w", err)
	}
	if err := tx.setPhase("B8", layout.PhaseRunning); err != nil {
		return fmt.Errorf("B8: %w", err)
	}
	if err := unix.Fstatat(tx.pfd, n.Journal, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil {
		tx.started = st.Mtim
	}
	return nil
}

// subvols names the subvolumes of the directory (dirfd, open) and of the
// shadow (name in the parent), for the journal; nil when they are not on
// btrfs.
func (tx *Tx) subvols(dirfd int, name string) (*layout.Subvols, error) {
	dir, on, err := layout.SubvolOf(dirfd)
	if err != nil {
		return nil, fmt.Errorf("B3: %s: %w", tx.n.Dir, err)
	}
	if !on {
		return nil, nil
	}
	fd, err := unix.Openat(tx.pfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("B3: open %s: %w", tx.n.Path(name), err)
	}
	defer unix.Close(fd)
	shadow, _, err := layout.SubvolOf(fd)
	if err != nil {
		return nil, fmt.Errorf("B3: %s: %w", tx.n.Path(name), err)
	}
	return &layout.Subvols{Dir: dir, Shadow: shadow}, nil
}

// recordSubvols records, in hard-link mode, the subvolumes of the
// directory and of the shadow just made (B3) where they are on btrfs. Where
// they cannot be named (a kernel before 4.18 has no
// BTRFS_IOC_GET_SUBVOL_INFO), the journal identifies the trees by device
// and inode numbers, as on other file systems.
func (tx *Tx) recordSubvols() error {
	fd, err := unix.Openat(tx.pfd, tx.n.Base, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("B3: open %s: %w", tx.n.Dir, err)
	}
	defer unix.Close(fd)
	sv, err := tx.subvols(fd, tx.n.Incomplete)
	if err != nil {
		tx.log.Debug("subvolumes not named: the journal identifies the trees by device numbers", "err", err)
		return nil
	}
	tx.j.Subvols = sv
	return nil
}
