package layout

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// Where says what stands under one of the names the shadow may have.
type Where int

// What Journal.Look finds under a name.
const (
	Absent    Where = iota // nothing that can be looked at
	NotShadow              // another inode than the journal's shadow
	IsShadow               // the shadow's inode
)

// Look looks at name in the parent pfd (path names it in errors), without
// following a symlink, for j's shadow, which is known by its inode. With
// Absent, err is why the name could not be looked at; with NotShadow, st is
// what is there; with IsShadow, err is nil when the entry may be treated as
// the shadow (CheckShadow) and says why not otherwise.
func (j *Journal) Look(pfd int, name, path string) (where Where, st *unix.Stat_t, err error) {
	st = new(unix.Stat_t)
	if err := unix.Fstatat(pfd, name, st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return Absent, nil, err
	}
	if !j.HoldsShadow(pfd, name, st) {
		return NotShadow, st, nil
	}
	return IsShadow, st, j.CheckShadow(pfd, name, path, st)
}

// ShadowAt checks that name, in the parent pfd, holds j's shadow.
func (j *Journal) ShadowAt(pfd int, name, path string) error {
	where, st, err := j.Look(pfd, name, path)
	switch where {
	case Absent:
		return fmt.Errorf("shadow %s: %w", path, err)
	case NotShadow:
		return j.notShadow(pfd, name, path, st)
	}
	return err
}

// IsShadow checks that st, the entry name in the parent pfd, is j's shadow:
// the inode j records, and a directory its owner made (CheckShadow).
func (j *Journal) IsShadow(pfd int, name, path string, st *unix.Stat_t) error {
	if !j.HoldsShadow(pfd, name, st) {
		return j.notShadow(pfd, name, path, st)
	}
	return j.CheckShadow(pfd, name, path, st)
}

func (j *Journal) notShadow(pfd int, name, path string, st *unix.Stat_t) error {
	if j.Subvols != nil {
		where := "not in a subvolume treetx can name"
		if id, err := subvolIDAt(pfd, name); err == nil {
			where = fmt.Sprintf("in subvolume %d", id)
		}
		return fmt.Errorf("%s is not the shadow the journal records (inode %d %s; journal: inode %d in subvolume %d)", path, st.Ino, where, j.Shadow.Ino, j.Subvols.Shadow.ID)
	}
	return fmt.Errorf("%s is not the shadow the journal records (inode %d on device %d; journal: inode %d on device %d)", path, st.Ino, st.Dev, j.Shadow.Ino, j.Shadow.Dev)
}
