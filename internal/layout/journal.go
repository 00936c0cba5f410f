package layout

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/fsys"
	"github.com/treetx/treetx/internal/safeopen"
)

// JournalVersion is the newest version of the journal format this package
// reads. It writes version 1 for a transaction on one tree, and version 2,
// which adds Group, for one over several trees: a treetx that knows only
// version 1 refuses such a journal instead of recovering one tree of the
// group on its own.
const JournalVersion = 2

// MaxGroup bounds the number of trees of one transaction.
const MaxGroup = 64

// Phase is the step a transaction had reached, as its journal records it.
type Phase string

// The phases, in the order a transaction goes through them.
const (
	// PhaseSnapshot: the shadow is being built; the directory is untouched.
	PhaseSnapshot Phase = "snapshot"
	// PhaseRunning: the shadow is complete and durable; the directory may be
	// changing. A crash here rolls back.
	PhaseRunning Phase = "running"
	// PhaseCommit: the changes are durable and the shadow is being dropped.
	// A crash here finishes the commit.
	PhaseCommit Phase = "commit"
	// PhaseRollback: the shadow is being put back. A crash here finishes the
	// rollback.
	PhaseRollback Phase = "rollback"
)

// Journal is the durable record of a transaction, kept beside the directory
// and replaced atomically at each phase.
type Journal struct {
	Version int       `json:"version"`
	ID      string    `json:"id"`
	PID     int       `json:"pid"`
	Host    string    `json:"host"`
	User    string    `json:"user"`
	Command []string  `json:"command"`
	Start   time.Time `json:"start"`
	Phase   Phase     `json:"phase"`
	// Dir is the directory's inode when the transaction began.
	Dir FileID `json:"dir"`
	// Shadow is the shadow root's inode: recovery installs a tree only when
	// its root is this inode.
	Shadow FileID `json:"shadow"`
	// Lost lists the hard-linked files whose old content a rollback found
	// written in place (phase rollback only).
	Lost []string `json:"lost,omitempty"`
	// Group, in a transaction over several trees, links the journals of
	// all of them (version 2).
	Group *Group `json:"group,omitempty"`
	// Owner is the uid that owns the journal file, as ReadJournal found
	// it (not part of the journal's text): the transaction's owner, whom
	// its manifest and shadow must belong to (see CheckShadow).
	Owner uint32 `json:"-"`
	// written is the journal file's mtime, as ReadJournal found it; zero
	// for a journal this process writes.
	written unix.Timespec
	// Mode is how the shadow is made: ModeSnapshot, or "" (left out of
	// the text) for hard links.
	Mode Mode `json:"mode,omitempty"`
	// Subvols names the subvolumes holding the directory's and the
	// shadow's roots on btrfs (nil elsewhere): there they, not the device
	// numbers of Dir and Shadow, identify the two.
	Subvols *Subvols `json:"subvols,omitempty"`
}

// Group is what each journal of a transaction over several trees says of
// the others. The journal of the first tree, the record, decides for all:
// the transaction committed once, and only if, the record's phase is
// commit. The record is written first and removed last, so it exists as
// long as any journal of the group does.
type Group struct {
	// ID identifies the group: every journal of it has the same.
	ID string `json:"id"`
	// Trees are the directories of the transaction, absolute, in the order
	// their locks are taken; the first is the record's.
	Trees []string `json:"trees"`
}

// Record returns the directory whose journal decides for the group.
func (g *Group) Record() string { return g.Trees[0] }

// MaxJournal bounds the size of a journal treetx reads.
const MaxJournal = 1 << 20

// journalRules are what a journal file must satisfy: treetx writes it as
// a new file (one link) that only its owner may write.
var journalRules = safeopen.Rules{OneLink: true, NotWritable: true}

// CheckShadow says whether st, the entry name in dirfd (at path) holding
// the inode j records as its shadow, may be treated as j's shadow: a
// directory owned by j's owner, or, when root owns j, by anyone (root gives
// the shadow the directory's owner); and, where the file system keeps birth
// times, born before the journal read was last written (the shadow is made
// before the first journal write). A directory that reuses a dead shadow's
// inode number is refused.
func (j *Journal) CheckShadow(dirfd int, name, path string, st *unix.Stat_t) error {
	r := safeopen.Rules{}
	if j.Owner != 0 {
		r.Owner = &j.Owner
	}
	if err := safeopen.Check(path, st, safeopen.Directory, r); err != nil {
		return err
	}
	if j.written != (unix.Timespec{}) {
		if born, ok := safeopen.Born(dirfd, name); ok && safeopen.After(born, j.written) {
			return &safeopen.RefusedError{Path: path, Want: "the shadow, made before the journal was written", Got: "a directory made after it, that reuses the shadow's inode number"}
		}
	}
	return nil
}

// ManifestRules are what the manifest of a transaction whose journal is j
// must satisfy: a file with one link, owned by j's owner, that only its
// owner may write.
func (j *Journal) ManifestRules() safeopen.Rules {
	owner := j.Owner
	return safeopen.Rules{OneLink: true, NotWritable: true, Owner: &owner}
}

// Errors reading a journal. Both mean recovery must not act on it.
var (
	ErrJournalCorrupt = errors.New("journal is unreadable or corrupt")
	ErrJournalFuture  = errors.New("journal is from a newer version of treetx")
)

// ReadJournal reads and checks the journal at path. A missing journal is
// reported as an error satisfying errors.Is(err, fs.ErrNotExist).
//
// The journal is read without following a symlink or blocking on a FIFO,
// and must be a regular file with one link that neither group nor others
// may write, of at most MaxJournal bytes; anything else is refused with a
// *safeopen.RefusedError. Journal.Owner is set to the file's owner.
func ReadJournal(path string) (*Journal, error) {
	pfd, err := safeopen.OpenDir(filepath.Dir(path))
	if err != nil {
		return nil, err
	}
	defer unix.Close(pfd)
	data, st, err := safeopen.ReadFile(pfd, filepath.Base(path), path, MaxJournal, journalRules)
	if err != nil {
		return nil, err
	}
	j, err := parseJournal(path, data)
	if err != nil {
		return nil, err
	}
	j.Owner, j.written = st.Uid, st.Mtim
	return j, nil
}

func parseJournal(path string, data []byte) (*Journal, error) {
	var probe struct {
		Version int `json:"version"`
	}
	if err := json.Unmarshal(data, &probe); err != nil {
		return nil, fmt.Errorf("%s: %w: %v", path, ErrJournalCorrupt, err)
	}
	if probe.Version > JournalVersion {
		return nil, fmt.Errorf("%s: %w (version %d; this treetx reads version %d)", path, ErrJournalFuture, probe.Version, JournalVersion)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var j Journal
	if err := dec.Decode(&j); err != nil {
		return nil, fmt.Errorf("%s: %w: %v", path, ErrJournalCorrupt, err)
	}
	switch {
	case j.Version != 1 && j.Version != 2, j.Version == 1 && j.Group != nil, j.Version == 2 && j.Group == nil:
		return nil, fmt.Errorf("%s: %w: version %d", path, ErrJournalCorrupt, j.Version)
	case !IsID(j.ID):
		return nil, fmt.Errorf("%s: %w: bad id %q", path, ErrJournalCorrupt, j.ID)
	case j.Shadow.Ino == 0:
		return nil, fmt.Errorf("%s: %w: no shadow inode", path, ErrJournalCorrupt)
	}
	if j.Group != nil {
		if err := j.Group.check(); err != nil {
			return nil, fmt.Errorf("%s: %w: group: %v", path, ErrJournalCorrupt, err)
		}
	}
	for _, l := range j.Lost {
		if err := safeopen.CheckRel(l, false); err != nil {
			return nil, fmt.Errorf("%s: %w: lost file: %v", path, ErrJournalCorrupt, err)
		}
	}
	switch j.Phase {
	case PhaseSnapshot, PhaseRunning, PhaseCommit, PhaseRollback:
	default:
		return nil, fmt.Errorf("%s: %w: unknown phase %q", path, ErrJournalCorrupt, j.Phase)
	}
	if err := j.checkMode(); err != nil {
		return nil, fmt.Errorf("%s: %w: %v", path, ErrJournalCorrupt, err)
	}
	return &j, nil
}

// WriteJournal replaces n's journal with j, atomically and durably: it
// unlinks a stale temporary file, writes a new one, fsyncs it, renames it
// over the journal and fsyncs the parent directory pfd.
func WriteJournal(fs fsys.FS, pfd int, n Names, j *Journal) error {
	data, err := json.MarshalIndent(j, "", "  ")
	if err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	data = append(data, '\n')
	if err := fs.Unlinkat(pfd, n.JournalTmp, 0); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("journal: remove stale %s: %w", n.Path(n.JournalTmp), err)
	}
	fd, err := fs.Create(pfd, n.JournalTmp, 0o644)
	if err != nil {
		return fmt.Errorf("journal: create %s: %w", n.Path(n.JournalTmp), err)
	}
	err = fs.Write(fd, data)
	if err == nil {
		err = fs.Fsync(fd)
	}
	unix.Close(fd)
	if err != nil {
		return fmt.Errorf("journal: write %s: %w", n.Path(n.JournalTmp), err)
	}
	if err := fs.Renameat2(pfd, n.JournalTmp, pfd, n.Journal, 0); err != nil {
		return fmt.Errorf("journal: rename %s: %w", n.Path(n.Journal), err)
	}
	if err := fs.Fsync(pfd); err != nil {
		return fmt.Errorf("journal: fsync %s: %w", n.Parent, err)
	}
	return nil
}

// check says what makes g no group treetx writes.
func (g *Group) check() error {
	if !IsID(g.ID) {
		return fmt.Errorf("bad id %q", g.ID)
	}
	if len(g.Trees) < 2 || len(g.Trees) > MaxGroup {
		return fmt.Errorf("%d trees", len(g.Trees))
	}
	seen := map[string]bool{}
	for _, t := range g.Trees {
		if !filepath.IsAbs(t) || filepath.Clean(t) != t || t == "/" || len(t) > 4096 || strings.ContainsRune(t, 0) {
			return fmt.Errorf("bad tree %q", t)
		}
		if seen[t] {
			return fmt.Errorf("tree %q twice", t)
		}
		seen[t] = true
	}
	return nil
}
