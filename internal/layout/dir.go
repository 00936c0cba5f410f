package layout

import (
	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/safeopen"
)

// FileID identifies an inode.
type FileID struct {
	Dev uint64 `json:"dev"`
	Ino uint64 `json:"ino"`
}

// IDOf returns the FileID of what st describes.
func IDOf(st *unix.Stat_t) FileID { return FileID{Dev: st.Dev, Ino: st.Ino} }

// OpenParent opens n's parent directory (safeopen.OpenDir): the descriptor
// every one of n's names is reached through. The caller closes it.
func (n Names) OpenParent() (int, error) { return safeopen.OpenDir(n.Parent) }

// ListParent lists the names in n's parent directory.
func (n Names) ListParent() ([]string, error) {
	fd, err := n.OpenParent()
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	return safeopen.ReadNames(fd, n.Parent)
}
