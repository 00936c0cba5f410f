package protocol

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/fsys"
	"github.com/treetx/treetx/internal/layout"
	"github.com/treetx/treetx/lock"
)

// Group is one transaction over several trees: either every tree ends as
// the command left it, or every tree ends as it was, whenever a crash
// comes. Each tree keeps its own lock, shadow and journal beside it, and
// its journal names the group (layout.Group). The journal of the first
// tree (in the order of their paths), the record, decides for all: the
// commit point is the one durable write that makes the record say commit
// (G-C3 in docs/protocol.md). The record is written first (its B4 before
// any other tree's) and removed last, so it exists as long as any journal
// of the group does; recovery of any tree reads it and finishes or undoes
// the whole group.
type Group struct {
	txs []*Tx
	ns  []layout.Names
	fs  fsys.FS
}

// BeginGroup locks every directory of dirs as one (lock.AcquireAll: the
// directories' locks and their hierarchical locks, never waiting while it
// holds some), then begins a transaction on each (B2..B8), the record's
// first. The directories must not overlap. On error nothing is left behind
// and every lock is released.
func BeginGroup(ctx context.Context, dirs []string, opts Options) (*Group, error) {
	if len(dirs) < 2 || len(dirs) > layout.MaxGroup {
		return nil, fmt.Errorf("a transaction over several trees takes 2 to %d directories, not %d", layout.MaxGroup, len(dirs))
	}
	ns := make([]layout.Names, 0, len(dirs))
	for _, d := range dirs {
		n, err := resolve(d)
		if err != nil {
			return nil, err
		}
		ns = append(ns, n)
	}
	slices.SortFunc(ns, func(a, b layout.Names) int { return strings.Compare(a.Dir, b.Dir) })
	for i := 1; i < len(ns); i++ {
		for _, o := range ns[:i] {
			switch {
			case o.Dir == ns[i].Dir:
				return nil, fmt.Errorf("%s: given twice", o.Dir)
			case strings.HasPrefix(ns[i].Dir, o.Dir+"/"):
				return nil, fmt.Errorf("%s lies inside %s: a transaction on %s already covers it; give only that", ns[i].Dir, o.Dir, o.Dir)
			}
		}
	}
	reqs := make([]lock.Request, len(ns))
	trees := make([]string, len(ns))
	for i, n := range ns {
		reqs[i], trees[i] = lockRequest(n, opts), n.Dir
	}
	// B1, for all: the locks of every tree, as one.
	lks, err := lock.AcquireAll(ctx, reqs, lock.Exclusive, opts.lockTimeout())
	if opts.Locked != nil {
		opts.Locked()
	}
	if err != nil {
		return nil, err
	}
	id, err := layout.NewID()
	if err != nil {
		for _, l := range lks {
			l.Release()
		}
		return nil, err
	}
	group := &layout.Group{ID: id, Trees: trees}
	g := &Group{ns: ns, fs: opts.FS}
	if g.fs == nil {
		g.fs = fsys.OS{}
	}
	// The markers, before any journal: each tree leads to the record.
	for i, n := range ns {
		err := g.eachParent(n, func(pfd int) error {
			if err := checkMarker(g.fs, pfd, n, nil); err != nil {
				return err
			}
			return layout.WriteMarker(g.fs, pfd, n, group)
		})
		if err != nil {
			for _, l := range lks {
				err = errors.Join(err, l.Release())
			}
			return nil, errors.Join(err, g.dropMarkers(ns[:i]))
		}
	}
	for i, n := range ns {
		tx, err := beginLocked(ctx, n, lks[i], opts, group)
		if err != nil {
			for _, l := range lks[i+1:] {
				err = errors.Join(err, l.Release())
			}
			_, rbErr := g.rollback(nil)
			if rbErr == nil {
				rbErr = g.dropMarkers(ns)
			}
			return nil, errors.Join(err, rbErr)
		}
		g.txs = append(g.txs, tx)
	}
	return g, nil
}

// Txs returns the group's transactions, the record's first.
func (g *Group) Txs() []*Tx { return g.txs }

// Commit commits every tree: first the steps before the commit point on
// each (C1, C2), then the commit point, the record's journal saying commit
// (C3 on the record), then the rest of each other tree's commit (C3..C8),
// the record's last. A failure before the commit point leaves every
// journal running, and the locks released: recovery rolls every tree back.
func (g *Group) Commit() ([]*Result, error) {
	results := make([]*Result, len(g.txs))
	for i, tx := range g.txs {
		if tx.done {
			return results, ErrDone
		}
		results[i] = &Result{LeftOut: tx.leftOut}
	}
	for i, tx := range g.txs {
		inPlace, err := tx.prepareCommit()
		if err != nil {
			return results, errors.Join(err, g.close())
		}
		results[i].InPlace = inPlace
	}
	// The commit point of the whole group.
	rec := g.txs[0]
	if err := rec.setPhase("C3", layout.PhaseCommit); err != nil {
		return results, errors.Join(fmt.Errorf("commit: %w", err), g.close())
	}
	var errs []error
	for i := len(g.txs) - 1; i >= 0; i-- {
		tx := g.txs[i]
		_, err := tx.endCommit(results[i])
		errs = append(errs, err, tx.close())
		results[i].Garbage = tx.garbage
		if err != nil && i > 0 {
			// The record must outlive every other journal: leave it
			// for recovery, which finishes the commit of all.
			return results, errors.Join(append(errs, g.close())...)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return results, err
	}
	return results, g.dropMarkers(g.ns)
}

// Rollback rolls every tree back, the record's last: each as Tx.Rollback
// does (a tree the command left unchanged ends without an exchange). If one
// of the others cannot be rolled back, the record's journal is left saying
// rollback (R2) for recovery, which rolls back that tree, then the record.
// A tree whose old content of files written in place is lost is reported by
// a *LostContentError among the errors.
func (g *Group) Rollback() ([]*Result, error) { return g.rollback(nil) }

// rollback rolls back the trees in g.txs, the record's last; results, if
// set, receives each tree's result.
func (g *Group) rollback(results []*Result) ([]*Result, error) {
	if results == nil {
		results = make([]*Result, len(g.txs))
	}
	var errs []error
	failed := false
	for i := len(g.txs) - 1; i >= 0; i-- {
		tx := g.txs[i]
		if tx.done {
			continue
		}
		if i == 0 && failed {
			// Another tree's journal stays: the record must outlive it,
			// saying rollback, for recovery to roll that tree back.
			errs = append(errs, tx.decideRollback())
			break
		}
		res, err := tx.Rollback()
		results[i] = res
		var lost *LostContentError
		if err != nil && !errors.As(err, &lost) {
			failed = true
		}
		errs = append(errs, err)
	}
	if !failed && len(g.txs) == len(g.ns) {
		errs = append(errs, g.dropMarkers(g.ns))
	}
	return results, errors.Join(errs...)
}

// close releases what is still held, leaving the journals as they are.
func (g *Group) close() error {
	var errs []error
	for _, tx := range g.txs {
		if !tx.done {
			errs = append(errs, tx.close())
		}
	}
	return errors.Join(errs...)
}

// eachParent runs fn on n's parent, open.
func (g *Group) eachParent(n layout.Names, fn func(pfd int) error) error {
	pfd, err := n.OpenParent()
	if err != nil {
		return err
	}
	defer unix.Close(pfd)
	return fn(pfd)
}

// dropMarkers removes the markers beside ns, once the group is over: every
// tree final, every journal gone. A marker left by a crash here is garbage
// (its record's journal is gone).
func (g *Group) dropMarkers(ns []layout.Names) error {
	var errs []error
	for _, n := range ns {
		errs = append(errs, g.eachParent(n, func(pfd int) error {
			if err := g.fs.Unlinkat(pfd, n.Group, 0); err != nil && !errors.Is(err, unix.ENOENT) {
				return fmt.Errorf("remove %s: %w", n.Path(n.Group), err)
			}
			return nil
		}))
	}
	return errors.Join(errs...)
}
