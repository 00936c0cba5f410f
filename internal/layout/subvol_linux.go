package layout

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/btrfs"
)

// Mode is how a transaction's shadow is made.
type Mode string

// The modes. A journal records ModeSnapshot in its "mode" field and leaves
// the field out for hard links, as journals did before there was a choice;
// ModeAuto is for options only.
const (
	// ModeAuto: a snapshot where the directory is the root of a btrfs
	// subvolume (and no mount point), hard links otherwise.
	ModeAuto Mode = "auto"
	// ModeHardlink: a shadow of hard links, with a manifest of what they
	// share with the tree (docs/protocol.md).
	ModeHardlink Mode = "hardlink"
	// ModeSnapshot: the shadow is a writable btrfs snapshot of the
	// directory, a subvolume's root: no manifest, nothing shared.
	ModeSnapshot Mode = "snapshot"
)

// ParseMode reads a mode as --mode takes it: "auto" (or ""), "hardlink",
// "snapshot".
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case "", ModeAuto:
		return ModeAuto, nil
	case ModeHardlink, ModeSnapshot:
		return m, nil
	}
	return "", fmt.Errorf("mode %q: want auto, hardlink or snapshot", s)
}

// Subvol names a btrfs subvolume for good: its id and UUID are kept on
// disk, whereas st_dev, the anonymous device number the kernel gives a
// subvolume when it first reads it, may be another after a remount
// (docs/btrfs.md).
type Subvol struct {
	ID   uint64 `json:"id"`
	UUID string `json:"uuid"`
}

// Subvols names, on btrfs, the subvolumes that hold the directory's root
// and the shadow's root when the transaction began: in hard-link mode both
// the subvolume of the directory's parent; in snapshot mode the directory's
// own subvolume and its snapshot.
type Subvols struct {
	Dir    Subvol `json:"dir"`
	Shadow Subvol `json:"shadow"`
}

// IsSnapshot reports whether j's shadow is a btrfs snapshot.
func (j *Journal) IsSnapshot() bool { return j.Mode == ModeSnapshot }

// ShownMode is j's mode as status shows it: "snapshot" or "hardlink".
func (j *Journal) ShownMode() Mode {
	if j.IsSnapshot() {
		return ModeSnapshot
	}
	return ModeHardlink
}

// SubvolOf returns the subvolume that holds the open directory fd, and
// false when fd is not on btrfs.
func SubvolOf(fd int) (Subvol, bool, error) {
	on, err := btrfs.IsBtrfs(fd)
	if err != nil || !on {
		return Subvol{}, false, err
	}
	info, err := btrfs.SubvolumeInfo(fd)
	if err != nil {
		return Subvol{}, true, err
	}
	return Subvol{ID: info.ID, UUID: btrfs.FormatUUID(info.UUID)}, true, nil
}

// subvolIDAt returns the id of the subvolume holding name, a directory in
// pfd, not following a symlink: statx's STATX_SUBVOL (Linux 6.10), which
// needs no permission on the directory; else BTRFS_IOC_GET_SUBVOL_INFO on
// the directory opened for reading.
func subvolIDAt(pfd int, name string) (uint64, error) {
	var stx unix.Statx_t
	if err := unix.Statx(pfd, name, unix.AT_SYMLINK_NOFOLLOW|unix.AT_STATX_SYNC_AS_STAT, unix.STATX_INO|unix.STATX_SUBVOL, &stx); err != nil {
		return 0, err
	}
	if stx.Mask&unix.STATX_SUBVOL != 0 {
		return stx.Subvol, nil
	}
	fd, err := unix.Openat(pfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	info, err := btrfs.SubvolumeInfo(fd)
	return info.ID, err
}

// holds reports whether st, the entry name in the parent pfd, is the inode
// id records. Where the journal names subvolumes (btrfs), an inode is the
// subvolume that holds it (sv, by its id) and its inode number there: the
// device number is not compared, since a remount may change it. Elsewhere
// it is the device and inode numbers.
func (j *Journal) holds(pfd int, name string, st *unix.Stat_t, id FileID, sv Subvol) bool {
	if st.Ino != id.Ino {
		return false
	}
	if j.Subvols == nil {
		return st.Dev == id.Dev
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return false
	}
	got, err := subvolIDAt(pfd, name)
	return err == nil && got == sv.ID
}

// HoldsShadow reports whether st, the entry name in the parent pfd, is j's
// shadow (by identity only: IsShadow checks it may be trusted too).
func (j *Journal) HoldsShadow(pfd int, name string, st *unix.Stat_t) bool {
	var sv Subvol
	if j.Subvols != nil {
		sv = j.Subvols.Shadow
	}
	return j.holds(pfd, name, st, j.Shadow, sv)
}

// isUUID reports whether s is a UUID as btrfs.FormatUUID writes one:
// 8-4-4-4-12 lowercase hex digits.
func isUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i, c := range s {
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
				return false
			}
		}
	}
	return true
}

// checkMode checks the mode and subvolume fields of a journal read: a
// known mode, well-formed subvolumes, and for a snapshot both, with the
// shadow and the directory subvolume roots.
func (j *Journal) checkMode() error {
	switch j.Mode {
	case "", ModeSnapshot:
	default:
		return fmt.Errorf("unknown mode %q", j.Mode)
	}
	if sv := j.Subvols; sv != nil {
		for _, s := range []Subvol{sv.Dir, sv.Shadow} {
			if s.ID == 0 || !isUUID(s.UUID) {
				return fmt.Errorf("bad subvolume %+v", s)
			}
		}
	}
	if j.IsSnapshot() {
		switch {
		case j.Subvols == nil:
			return errors.New("a snapshot without its subvolumes")
		case j.Shadow.Ino != btrfs.FirstFreeObjectID || j.Dir.Ino != btrfs.FirstFreeObjectID:
			return errors.New("a snapshot whose roots are not subvolume roots (inode 256)")
		case j.Subvols.Dir.ID == j.Subvols.Shadow.ID:
			return errors.New("a snapshot in the directory's own subvolume")
		}
	}
	return nil
}

// isSubvolumeRoot reports whether dir is the root of a btrfs subvolume.
func isSubvolumeRoot(dir string) bool {
	ok, err := btrfs.IsSubvolumeRootAt(unix.AT_FDCWD, dir)
	return err == nil && ok
}
