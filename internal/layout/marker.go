package layout

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/fsys"
	"github.com/treetx/treetx/internal/safeopen"
)

// The marker of a transaction over several trees, Names.Group beside each
// of them, holds the group (its id and trees) from before the first journal
// of the group is written until after the last is removed. A tree's journal
// goes once the tree is final, but the others may not be: the marker leads
// a recovery of that tree to the record (Group.Record), whose journal
// decides for all. Written before any journal of the group, a marker whose
// record journal is absent (or another transaction's) is garbage: the
// group finished, or never wrote a journal.

// maxMarker bounds the size of a marker treetx reads.
const maxMarker = 1 << 20

// WriteMarker creates n's marker, holding g, and makes it durable (the
// file, then its directory pfd).
func WriteMarker(fs fsys.FS, pfd int, n Names, g *Group) error {
	data, err := json.Marshal(g)
	if err != nil {
		return fmt.Errorf("group marker: %w", err)
	}
	fd, err := fs.Create(pfd, n.Group, 0o644)
	if err != nil {
		return fmt.Errorf("group marker: create %s: %w", n.Path(n.Group), err)
	}
	err = fs.Write(fd, append(data, '\n'))
	if err == nil {
		err = fs.Fsync(fd)
	}
	unix.Close(fd)
	if err != nil {
		return fmt.Errorf("group marker: write %s: %w", n.Path(n.Group), err)
	}
	if err := fs.Fsync(pfd); err != nil {
		return fmt.Errorf("group marker: fsync %s: %w", n.Parent, err)
	}
	return nil
}

// ReadMarker reads n's marker, as a journal is read (a regular file with
// one link that neither group nor others may write), and returns its group
// and owner. A missing marker satisfies errors.Is(err, fs.ErrNotExist).
func ReadMarker(n Names) (*Group, uint32, error) {
	pfd, err := n.OpenParent()
	if err != nil {
		return nil, 0, err
	}
	defer unix.Close(pfd)
	data, st, err := safeopen.ReadFile(pfd, n.Group, n.Path(n.Group), maxMarker, journalRules)
	if err != nil {
		return nil, 0, err
	}
	var g Group
	if err := json.Unmarshal(data, &g); err != nil {
		return nil, 0, fmt.Errorf("%s: %w: %v", n.Path(n.Group), ErrJournalCorrupt, err)
	}
	if err := g.check(); err != nil {
		return nil, 0, fmt.Errorf("%s: %w: %v", n.Path(n.Group), ErrJournalCorrupt, err)
	}
	return &g, st.Uid, nil
}

// Unfinished reports whether the group g, found in a marker owned by owner,
// still has its record's journal (its own, the same owner's): the group is
// not over. Otherwise the marker is garbage.
func (g *Group) Unfinished(owner uint32) (bool, error) {
	rn, err := NamesFor(g.Record())
	if err != nil {
		return false, nil
	}
	rec, err := ReadJournal(rn.Path(rn.Journal))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	case err != nil:
		return false, err
	}
	return rec.Group != nil && rec.Group.ID == g.ID && rec.Owner == owner, nil
}
