package txn

import (
	"context"

	"github.com/treetx/treetx/internal/protocol"
)

// Group is one transaction over several directories: either every one ends
// as the caller left it (Commit), or every one ends as it was (Rollback),
// and so after a crash at any instant and a recovery of any one of them.
// Each directory keeps its own lock, shadow and journal beside it; the
// journal of the first (in the order of their paths) records the decision
// for all. docs/protocol.md says how.
type Group struct {
	g   *protocol.Group
	txs []*Tx
}

// BeginGroup locks every directory of dirs as one (never waiting while it
// holds some of the locks, so that two groups over overlapping directories
// cannot deadlock; opts.LockTimeout covers them all), then builds each
// one's shadow and records the transaction. The directories must not
// overlap (one inside another). On error nothing is left behind and every
// lock is released.
func BeginGroup(ctx context.Context, dirs []string, opts Options) (*Group, error) {
	g, err := protocol.BeginGroup(ctx, dirs, protocol.Options(opts))
	if err != nil {
		return nil, err
	}
	out := &Group{g: g}
	for _, tx := range g.Txs() {
		out.txs = append(out.txs, &Tx{tx: tx})
	}
	return out, nil
}

// Txs returns the transaction on each directory, in the order of their
// paths (the first records the decision for all). Commit and Rollback them
// only through the Group.
func (g *Group) Txs() []*Tx { return g.txs }

// Commit makes every directory's changes durable, then commits them all at
// one durable write, then drops every shadow. The results are in the order
// of Txs.
func (g *Group) Commit() ([]*Result, error) { return results(g.g.Commit()) }

// Rollback puts every shadow back (a directory left unchanged keeps its
// inodes), the first directory's last. The results are in the order of
// Txs; a *LostContentError among the errors names a directory whose old
// content of files written in place is lost.
func (g *Group) Rollback() ([]*Result, error) { return results(g.g.Rollback()) }

func results(rs []*protocol.Result, err error) ([]*Result, error) {
	out := make([]*Result, len(rs))
	for i, r := range rs {
		if r != nil {
			res := Result(*r)
			out[i] = &res
		}
	}
	return out, err
}
