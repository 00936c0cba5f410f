package recover

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/command"
	"github.com/treetx/treetx/internal/layout"
	"github.com/treetx/treetx/internal/safeopen"
	"github.com/treetx/treetx/snapshot"
)

// classify reads the names beside n.Dir and its journal, under a lock the
// caller holds, and says which row of the crash-state table of
// docs/protocol.md they are, and whether recovery may act on them: a report
// with Row, State, Found and Action set, and what plan needs.
func classify(n layout.Names) (*Report, error) {
	r := &Report{Dir: n.Dir}
	pfd, err := n.OpenParent()
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", n.Parent, err)
	}
	defer unix.Close(pfd)
	names, err := safeopen.ReadNames(pfd, n.Parent)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", n.Parent, err)
	}
	present := map[layout.Kind][]string{}
	for _, name := range names {
		if k := n.Classify(name); k != layout.KindOther {
			present[k] = append(present[k], name)
		}
	}
	r.failed = present[layout.KindFailed]
	// Row 17: the gate is opened only by a locker that waits, never
	// here; one that is not a regular file with one link would refuse
	// every such locker, so it needs a person now, as the lock file would.
	for _, name := range present[layout.KindGate] {
		var st unix.Stat_t
		if err := unix.Lstat(n.Path(name), &st); err == nil {
			if err := safeopen.Check(n.Path(name), &st, safeopen.Regular, safeopen.Rules{OneLink: true}); err != nil {
				r.State, r.Row, r.Found = StateNeedsPerson, "17", err.Error()
				return r, nil
			}
		}
	}
	j, jerr := layout.ReadJournal(n.Path(n.Journal))
	switch {
	case jerr == nil:
		r.Journal, r.Phase = j, j.Phase
		who := fmt.Sprintf("transaction %s (pid %d on %s, %s, since %s)", j.ID, j.PID, command.Show([]string{j.Host}), command.Show(j.Command), j.Start.Format(time.RFC3339))
		row, shadowAt, problem := checkShadow(n, pfd, j, present)
		r.Row, r.shadowAt, r.Mode = snapshotRow(j, row), shadowAt, j.ShownMode()
		if problem != "" {
			r.State = StateNeedsPerson
			r.Found = fmt.Sprintf("an interrupted %s in phase %s, but %s; nothing done: inspect it, and the names %s%s.* beside it", who, j.Phase, problem, layout.Prefix, n.Base)
			return r, nil
		}
		r.State = StateNeedsRecovery
		switch j.Phase {
		case layout.PhaseSnapshot: // rows 5, 6, 7
			r.Found = "an interrupted " + who + " that was still building its shadow"
			r.Action = "drop the shadow (the directory was never touched)"
		case layout.PhaseRunning: // row 8
			r.Found = "an interrupted " + who + " whose command had not finished"
			r.Action = "roll back to the tree from before the transaction"
		case layout.PhaseRollback: // rows 10, 11, 12, 13
			r.Found = "an interrupted rollback of " + who
			r.Action = "finish the rollback"
		case layout.PhaseCommit: // rows 14, 15
			r.Found = "an interrupted commit of " + who
			r.Action = "finish the commit (the new tree is durable)"
		}
		r.Found += snapshotFound(j)
		if j.Group != nil { // rows 29, 30, 31
			r.Found += fmt.Sprintf(", one of the %d trees of transaction %s", len(j.Group.Trees), j.Group.ID)
			classifyGroup(n, r, j)
		}
		return r, nil
	case !errors.Is(jerr, fs.ErrNotExist): // row 16; row 17 for a journal file treetx did not write
		r.State, r.Row = StateNeedsPerson, "16"
		if errors.Is(jerr, safeopen.ErrRefused) {
			r.Row = "17"
		}
		r.Found = fmt.Sprintf("%v; nothing done: inspect it, and the names %s%s.* beside it", jerr, layout.Prefix, n.Base)
		return r, nil
	}
	if len(present[layout.KindGroup]) > 0 {
		// The marker of a transaction over several trees, with no journal
		// here: this tree is final. Row 30 while the group's record still
		// has its journal (recovering the record recovers this tree's
		// group); else garbage (row 3).
		g, owner, err := layout.ReadMarker(n)
		unfinished := false
		if err == nil {
			unfinished, err = g.Unfinished(owner)
		}
		if err == nil && unfinished {
			r.State, r.Row = StateNeedsRecovery, "30"
			r.Group = &GroupReport{ID: g.ID, Trees: g.Trees}
			r.Found = fmt.Sprintf("one of the %d trees of transaction %s, which is not over", len(g.Trees), g.ID)
			r.Action = "recover the transaction from its record, " + g.Record()
			return r, nil
		}
		r.garbage = append(r.garbage, present[layout.KindGroup]...)
	}
	if c := present[layout.KindComplete]; len(c) > 0 { // row 4
		r.State, r.Row = StateNeedsPerson, "4"
		r.Found = fmt.Sprintf("%s exists but no journal claims it, so it was not made by treetx and is never installed; move it away", n.Path(n.Complete))
		return r, nil
	}
	// Rows 2 and 3: garbage of a transaction that never began, or ended.
	for _, k := range []layout.Kind{layout.KindIncomplete, layout.KindJournalTmp, layout.KindMeta} {
		r.garbage = append(r.garbage, present[k]...)
	}
	if len(r.garbage) == 0 { // rows 1 and 3a
		// Trees named for removal alone are no unfinished business: treetx
		// run leaves their deletion to a detached process. Recover and gc
		// still delete them (deleting one twice at once is safe), in case
		// that process died.
		r.State, r.Row = StateIdle, "1"
		r.Found = "no transaction"
		if len(r.failed) > 0 {
			r.Found += fmt.Sprintf("; failed tree(s) kept for inspection: %s", strings.Join(r.failed, ", "))
		}
		if rm := present[layout.KindRemoving]; len(rm) > 0 {
			r.garbage, r.Row = rm, "3a"
			r.Found += fmt.Sprintf("; old trees being deleted: %s", strings.Join(rm, ", "))
			r.Action = "delete them (they belong to no transaction)"
		}
		return r, nil
	}
	r.Row = "3"
	if inc := present[layout.KindIncomplete]; len(inc) > 0 {
		r.Row = "2"
		if isSnapshotLeftover(n, inc[0]) { // row 18
			r.Row = "18"
		}
	}
	r.garbage = append(r.garbage, present[layout.KindRemoving]...)
	r.State = StateNeedsRecovery
	r.Found = fmt.Sprintf("leftovers of finished or abandoned transactions: %s", strings.Join(r.garbage, ", "))
	r.Action = "remove them (the directory is not involved)"
	return r, nil
}

// checkShadow finds the journal j's shadow, by inode, among the names in
// the parent pfd, and says which row of the table that is, and the name
// that holds the shadow ("" if none does); or what, if anything, keeps
// recovery from acting on the journal: the shadow must be where the phase
// allows, one its owner made, and the manifest there when a rollback needs
// it. problem is "" if all is well.
func checkShadow(n layout.Names, pfd int, j *layout.Journal, present map[layout.Kind][]string) (row, shadowAt, problem string) {
	var untrusted error
	at := func(name string) (ok, there bool) {
		where, _, err := j.Look(pfd, name, n.Path(name))
		switch {
		case where == layout.Absent:
			return false, false
		case where == layout.NotShadow:
			return false, true
		case err != nil:
			untrusted = err
			return false, true
		}
		return true, true
	}
	notShadow := func(name string) string {
		return fmt.Sprintf("%s is not the shadow the journal records (inode %d)", n.Path(name), j.Shadow.Ino)
	}
	inComplete, completeThere := at(n.Complete)
	defer func() {
		if untrusted != nil { // row 17
			row, shadowAt = "17", ""
			problem = fmt.Sprintf("its shadow is not one its owner (uid %d) made: %v", j.Owner, untrusted)
		}
	}()
	switch j.Phase {
	case layout.PhaseSnapshot, layout.PhaseCommit:
		// Both names are dropped if they hold the shadow, refused if not
		// (row 17).
		if completeThere && !inComplete {
			return "17", "", notShadow(n.Complete)
		}
		inIncomplete, there := at(n.Incomplete)
		if there && !inIncomplete {
			return "17", "", notShadow(n.Incomplete)
		}
		switch {
		case j.Phase == layout.PhaseCommit && (inComplete || inIncomplete): // row 14
			row = "14"
		case j.Phase == layout.PhaseCommit: // row 15
			row = "15"
		case inComplete: // row 6
			row = "6"
		case inIncomplete: // row 5
			row = "5"
		default: // row 7
			row = "7"
		}
		if inComplete {
			shadowAt = n.Complete
		} else if inIncomplete {
			shadowAt = n.Incomplete
		}
	case layout.PhaseRunning, layout.PhaseRollback:
		inDir, dirThere := at(n.Base)
		switch {
		case inComplete && j.Phase == layout.PhaseRunning: // row 8
			row, shadowAt = "8", n.Complete
		case inComplete && dirThere: // row 10
			row, shadowAt = "10", n.Complete
		case inComplete: // row 13
			row, shadowAt = "13", n.Complete
		case j.Phase == layout.PhaseRollback && inDir && completeThere: // row 11
			row, shadowAt = "11", n.Base
		case j.Phase == layout.PhaseRollback && inDir: // row 12
			row, shadowAt = "12", n.Base
		case completeThere: // row 9
			return "9", "", notShadow(n.Complete)
		default: // row 9
			return "9", "", fmt.Sprintf("the shadow (inode %d) is neither at %s nor at %s", j.Shadow.Ino, n.Path(n.Complete), n.Dir)
		}
		// Row 9 too: a rollback needs the whole manifest (in hard-link
		// mode).
		if j.IsSnapshot() {
			break
		}
		if len(present[layout.KindMeta]) == 0 {
			return "9", "", fmt.Sprintf("its manifest %s is missing", n.Path(n.Meta))
		}
		if err := checkManifest(n.Path(n.Meta), j); err != nil {
			return "9", "", fmt.Sprintf("its manifest is unusable: %v", err)
		}
	}
	return row, shadowAt, ""
}

// checkManifest reads the manifest at path through, as a rollback will.
func checkManifest(path string, j *layout.Journal) error {
	pfd, err := safeopen.OpenDir(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer unix.Close(pfd)
	fd, _, err := safeopen.OpenAt(pfd, filepath.Base(path), path, unix.O_RDONLY, 0, safeopen.Regular, j.ManifestRules())
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	return snapshot.ReadManifest(f, func(snapshot.Record) error { return nil })
}

// hasNamesOf reports whether n's parent holds one of n's names (nothing
// when it cannot be read).
func hasNamesOf(n layout.Names) bool {
	names, _ := n.ListParent()
	for _, name := range names {
		if n.Classify(name) != layout.KindOther {
			return true
		}
	}
	return false
}
