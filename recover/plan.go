package recover

import (
	"fmt"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/layout"
)

// Step is one step of a recovery's plan: its ID in docs/protocol.md (a
// step of the protocol, C4..C8 or R1..R7, that recovery resumes, or G1..G3
// for what no journal claims), what it does, and the path it acts on.
type Step struct {
	ID   string `json:"step"`
	Do   string `json:"do"`
	Path string `json:"path"`

	stage stage  // what apply does with it
	drop  bool   // it removes Path (G1..G3): counted in Report.Removed
	name  string // the name in the parent it acts on, for G1..G3
	id    string // the removal id to rename a tree with (G2), "" for a new one
}

// stage groups a plan's steps by what carries them out.
type stage int

const (
	stageExpire  stage = iota // gc: failed trees past their age, each dropped (G2)
	stageDrop                 // what no journal claims, each dropped (G1..G3)
	stageJournal              // the journal's transaction: protocol.Finish
)

// String writes the step on one line: its ID, what it does, its path.
func (s Step) String() string { return s.ID + " " + s.Do + ": " + s.Path }

// plan sets r.Plan to the steps recovery takes on the state classify found
// (nothing for a state it may not act on), in order: with gc, first the
// failed trees older than gc.FailedOlderThan; then the steps of the
// journal's row, or the removal of what no journal claims.
func plan(r *Report, n layout.Names, gc *GCOptions) {
	r.Plan = nil
	if r.State != StateIdle && r.State != StateNeedsRecovery {
		return
	}
	if gc != nil {
		planExpire(r, n, gc)
	}
	if r.Journal != nil {
		r.Plan = append(r.Plan, journalSteps(n, r.Journal, r.Row, r.shadowAt)...)
		return
	}
	for _, name := range r.garbage {
		r.Plan = append(r.Plan, dropStep(n, name, "", stageDrop))
	}
}

// journalSteps are the steps that finish the transaction of the journal j
// from the row the crash left: the rest of a commit (C4..C8) or of a
// rollback (R1..R7), as the row says in docs/protocol.md. shadowAt is the
// name holding the shadow.
func journalSteps(n layout.Names, j *layout.Journal, row, shadowAt string) []Step {
	if j.IsSnapshot() {
		return snapshotSteps(n, j, row, shadowAt)
	}
	step := func(id, do, path string) Step { return Step{ID: id, Do: do, Path: path, stage: stageJournal} }
	end := []Step{ // C5..C8
		step("C5", "unlink the journal; fsync the parent", n.Path(n.Journal)),
		step("C6", "move the manifest into the removal tree, or unlink it; unlink a stale temporary journal", n.Path(n.Meta)),
		step("C7", "delete the trees named for removal (this transaction's is "+n.Removing(j.ID)+")", n.Path(n.Removing(j.ID))),
		step("C8", "release the lock", n.Path(n.Lock)),
	}
	failed := n.Removing(j.ID)
	switch {
	case row == "8":
		failed += " (" + n.Failed(j.ID) + " if R1 finds content lost)"
	case len(j.Lost) > 0:
		failed = n.Failed(j.ID)
	}
	restore := step("R3", "restore the recorded owner, mode, extended attributes and times of the linked files", n.Path(shadowAt))
	syncfs := step("R5", "syncfs: the restored metadata and the exchange are durable", n.Parent)
	putAway := step("R6", "rename the failed tree to "+failed+"; fsync the parent", n.Path(n.Complete))
	r7 := step("R7", "end the transaction, as C5..C8", n.Path(n.Journal))
	switch row {
	case "5", "6", "14": // the shadow is there: C4, then C5..C8
		c4 := step("C4", "rename the shadow to "+n.Removing(j.ID)+" (delete it in place if the rename fails); fsync the parent", n.Path(shadowAt))
		return append([]Step{c4}, end...)
	case "7", "15": // C5..C8
		return end
	case "29": // C3, C4, C5..C8
		c3 := step("C3", "write the journal with phase commit, as the group's record says", n.Path(n.Journal))
		c4 := step("C4", "rename the shadow to "+n.Removing(j.ID)+" (delete it in place if the rename fails); fsync the parent", n.Path(shadowAt))
		return append([]Step{c3, c4}, end...)
	case "8": // R1..R7
		return []Step{
			step("R1", "list the linked files written in place (every one: a crash lost the watch)", n.Path(n.Complete)),
			step("R2", "write the journal with phase rollback and that list", n.Path(n.Journal)),
			restore,
			step("R4", "exchange the shadow and "+n.Dir, n.Path(n.Complete)),
			syncfs, putAway, r7,
		}
	case "10": // from R3
		return []Step{restore, step("R4", "exchange the shadow and "+n.Dir, n.Path(n.Complete)), syncfs, putAway, r7}
	case "11": // R3 again on the directory, R5, R6, R7
		return []Step{restore, syncfs, putAway, r7}
	case "12": // R3 again on the directory, R5, R7
		return []Step{restore, syncfs, r7}
	case "13": // R3, the shadow renamed into place, R5, R7
		return []Step{restore, step("R4", "rename the shadow to "+n.Dir+", which is missing", n.Path(n.Complete)), syncfs, r7}
	}
	return nil
}

// dropStep is the step that removes name, which no journal claims, as
// layout.Names.DropTree will: a file is unlinked (G1), a tree renamed to a
// removal name (with id, or a new one), durably, then deleted (G2), a tree
// already under a removal name deleted (G3).
func dropStep(n layout.Names, name, id string, st stage) Step {
	s := Step{ID: "G2", Do: "rename the tree to a removal name; fsync the parent; delete it", Path: n.Path(name), stage: st, drop: true, name: name, id: id}
	removing := n.Classify(name) == layout.KindRemoving
	var fi unix.Stat_t
	switch err := unix.Lstat(s.Path, &fi); {
	case err == nil && fi.Mode&unix.S_IFMT != unix.S_IFDIR:
		s.ID, s.Do = "G1", "unlink it (only the name goes)"
	case removing:
		s.ID, s.Do = "G3", "delete the tree"
	}
	return s
}

// planExpire adds to the plan the removal of the failed trees older than
// gc.FailedOlderThan, but one the journal's own transaction made, and says
// so in r's Found and Action.
func planExpire(r *Report, n layout.Names, gc *GCOptions) {
	now := gc.Now
	if now.IsZero() {
		now = time.Now()
	}
	var old []string
	for _, name := range r.failed {
		if r.Journal != nil && name == n.Failed(r.Journal.ID) {
			continue
		}
		var st unix.Stat_t
		if err := unix.Lstat(n.Path(name), &st); err != nil {
			continue
		}
		if changed := time.Unix(st.Ctim.Unix()); now.Sub(changed) >= gc.FailedOlderThan {
			old = append(old, name)
		}
	}
	if len(old) == 0 {
		return
	}
	what := fmt.Sprintf("remove %d failed tree(s) kept for inspection, older than %v", len(old), gc.FailedOlderThan)
	if r.Action == "" {
		r.Action = what
	} else {
		r.Action = what + "; " + r.Action
	}
	if r.State == StateIdle {
		r.Found = fmt.Sprintf("failed tree(s) older than %v: %s", gc.FailedOlderThan, strings.Join(old, ", "))
	}
	for _, name := range old {
		_, _, id := layout.ParseName(name)
		r.Plan = append(r.Plan, dropStep(n, name, id, stageExpire))
	}
}
