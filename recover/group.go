package recover

import (
	"errors"
	"fmt"
	"io/fs"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/fsys"
	"github.com/treetx/treetx/internal/layout"
	"github.com/treetx/treetx/internal/protocol"
	"github.com/treetx/treetx/lock"
)

// GroupReport describes the group of a transaction over several trees
// (layout.Group) that a journal belongs to.
type GroupReport struct {
	// ID is the group's id; Trees its directories, the record's first.
	ID    string   `json:"id"`
	Trees []string `json:"trees"`
	// Decision is what the record's journal decides for every tree:
	// "commit" once it says commit, "rollback" otherwise; "" when it
	// cannot be read (the report then needs a person).
	Decision string `json:"decision"`
}

// classifyGroup completes the classification of n, whose journal j belongs
// to a group: it reads the group's record (the first tree's journal) and
// says what it decides. A journal in phase running of a group whose record
// says commit is row 29: recovery commits that tree too. Row 31: the
// record is missing (or is another transaction's) while this journal has
// not reached its own decision: nothing says whether the group committed.
func classifyGroup(n layout.Names, r *Report, j *layout.Journal) {
	g := j.Group
	r.Group = &GroupReport{ID: g.ID, Trees: g.Trees}
	if !slices.Contains(g.Trees, n.Dir) { // row 31
		r.State, r.Row = StateNeedsPerson, "31"
		r.Found = fmt.Sprintf("its journal names a group of trees (%v) that %s is not one of; nothing done", g.Trees, n.Dir)
		r.Action = ""
		return
	}
	decided := func(p layout.Phase) string {
		if p == layout.PhaseCommit {
			return "commit"
		}
		return "rollback"
	}
	if g.Record() == n.Dir {
		r.Group.Decision = decided(j.Phase)
		return
	}
	rn, err := layout.NamesFor(g.Record())
	if err == nil {
		var rec *layout.Journal
		rec, err = layout.ReadJournal(rn.Path(rn.Journal))
		switch {
		case err == nil && (rec.Group == nil || rec.Group.ID != g.ID):
			err = fmt.Errorf("%s is another transaction's journal: %w", rn.Path(rn.Journal), fs.ErrNotExist)
		case err == nil && rec.Owner != j.Owner:
			err = fmt.Errorf("%s belongs to uid %d, this journal to uid %d", rn.Path(rn.Journal), rec.Owner, j.Owner)
		case err == nil:
			r.Group.Decision = decided(rec.Phase)
		}
	}
	if err != nil {
		if j.Phase == layout.PhaseCommit || j.Phase == layout.PhaseRollback {
			// This tree's own journal has decided (it could only have
			// after the record did).
			r.Group.Decision = decided(j.Phase)
			return
		}
		r.State, r.Row, r.Action = StateNeedsPerson, "31", ""
		r.Found = fmt.Sprintf("%s, in phase %s, belongs to transaction %s over %v, but the journal of %s, which records whether it committed, cannot be read (%v); nothing done: inspect the names %s* beside each tree", n.Path(n.Journal), j.Phase, g.ID, g.Trees, g.Record(), err, layout.Prefix)
		return
	}
	if r.Group.Decision == "commit" && j.Phase == layout.PhaseRunning && r.Row == "8" { // row 29
		r.Row = "29"
		r.Action = "finish the commit (the group's record, " + g.Record() + ", says commit)"
	}
}

// recoverGroup recovers every tree of the group of n's journal (r, which
// classify made under n's lock, held by the caller): it takes the other
// trees' locks without waiting (busy if one is held), then finishes or
// undoes each tree as the record decides, the record's last, so that the
// record outlives every other journal of the group. It stops at the first
// tree that fails or needs a person.
func recoverGroup(n layout.Names, r *Report, opts Options, verb string) (*Report, error) {
	g := r.Journal.Group
	var held []*lock.Lock
	defer func() {
		for _, l := range held {
			l.Release()
		}
	}()
	for _, t := range g.Trees {
		if t == n.Dir {
			continue
		}
		tn, err := layout.NamesFor(t)
		if err != nil {
			return errorReport(n.Dir, err), err
		}
		lk, tr, err := lockDir(tn, lock.Options{Mode: lock.Exclusive, Timeout: 0, Self: lock.Holder{Command: []string{"treetx", verb, n.Dir}}, Tree: t})
		if lk == nil {
			r.State, r.LockHeld, r.Action = tr.State, tr.LockHeld, "left alone"
			r.Found = fmt.Sprintf("transaction %s over %v: %s: %s", g.ID, g.Trees, t, tr.Found)
			return r, fmt.Errorf("%s: %w", n.Dir, err)
		}
		held = append(held, lk)
	}
	// Row 30 (and 29): every other tree by its own row, as the record
	// decides; the record's last.
	order := append(slices.Clone(g.Trees[1:]), g.Trees[0])
	var errs []error
	for _, t := range order {
		tr := r
		tn := n
		if t != n.Dir {
			var err error
			if tn, err = layout.NamesFor(t); err != nil {
				return errorReport(n.Dir, err), err
			}
			if tr, err = classify(tn); err != nil {
				errs = append(errs, err)
				break
			}
			if tr.Journal != nil && (tr.Journal.Group == nil || tr.Journal.Group.ID != g.ID) {
				continue // another transaction's: that tree is done with this one
			}
			// Without a journal, what the group left there (row 2 or 3:
			// a shadow begun, a manifest) goes too.
		}
		if tr.State == StateNeedsPerson {
			errs = append(errs, fmt.Errorf("%s: %w: %s", t, ErrNeedsPerson, tr.Found))
			break
		}
		plan(tr, tn, nil)
		if len(tr.Plan) == 0 {
			continue
		}
		if err := apply(tr, tn, opts); err != nil {
			errs = append(errs, err)
			var lost *protocol.LostContentError
			if tr.Done && errors.As(err, &lost) {
				continue // lost content: that tree is rolled back
			}
			break
		}
	}
	err := errors.Join(errs...)
	if err != nil {
		if r.Error == "" {
			r.Error = err.Error()
		}
		return r, err
	}
	// The group is over: every tree final, every journal gone.
	f := opts.FS
	if f == nil {
		f = fsys.OS{}
	}
	for _, t := range g.Trees {
		tn, err := layout.NamesFor(t)
		if err != nil {
			continue
		}
		pfd, err := tn.OpenParent()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		err = f.Unlinkat(pfd, tn.Group, 0)
		unix.Close(pfd)
		if err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("remove %s: %w", tn.Path(tn.Group), err))
		}
	}
	err = errors.Join(errs...)
	if err != nil {
		r.Error = err.Error()
	}
	return r, err
}
