package lock

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"
)

// Request is one lock of a set AcquireAll takes: the lock file at Path, with
// Options (whose Mode, Timeout apply to the whole set: the Request's own are
// ignored).
type Request struct {
	Path string
	Options
}

// AcquireAll takes every lock of reqs, in mode and within timeout as
// Options.Timeout says, as one: on success the locks are returned in the
// order of reqs; on failure none is held.
//
// It never waits while it holds some of them, so two callers over sets that
// overlap, in any order, and with the hierarchical locks of Options.Tree
// (under which a lock can conflict with one of another path), cannot
// deadlock: it tries the locks in order of their paths, each once; at the
// first one held elsewhere it releases those it has, waits until that one
// is free (taking and releasing it through its gate, so that it queues
// fairly), and starts again.
func AcquireAll(ctx context.Context, reqs []Request, mode Mode, timeout time.Duration) ([]*Lock, error) {
	if len(reqs) == 0 {
		return nil, errors.New("lock: no lock to take")
	}
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, timeout, errTimeout)
		defer cancel()
	}
	order := make([]int, len(reqs))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int {
		switch {
		case reqs[a].Path < reqs[b].Path:
			return -1
		case reqs[a].Path > reqs[b].Path:
			return 1
		}
		return 0
	})
	for i := 1; i < len(order); i++ {
		if reqs[order[i]].Path == reqs[order[i-1]].Path {
			return nil, fmt.Errorf("lock %s: asked for twice", reqs[order[i]].Path)
		}
	}
	held := make([]*Lock, len(reqs))
	release := func() error {
		var errs []error
		for i, l := range held {
			if l != nil {
				errs = append(errs, l.Release())
				held[i] = nil
			}
		}
		return errors.Join(errs...)
	}
	for {
		busy, busyErr := -1, error(nil)
		for _, i := range order {
			o := reqs[i].Options
			o.Mode, o.Timeout = mode, 0
			l, err := Acquire(ctx, reqs[i].Path, o)
			if errors.Is(err, ErrLocked) {
				busy, busyErr = i, err
				break
			}
			if err != nil {
				return nil, errors.Join(err, release())
			}
			held[i] = l
		}
		if busy < 0 {
			return held, nil
		}
		if err := release(); err != nil {
			return nil, err
		}
		if timeout == 0 {
			return nil, busyErr
		}
		// Wait for the busy one alone (its own timeout is the set's:
		// ctx's), then try the whole set again.
		o := reqs[busy].Options
		o.Mode, o.Timeout = mode, -1
		l, err := Acquire(ctx, reqs[busy].Path, o)
		if err != nil {
			return nil, err
		}
		if err := l.Release(); err != nil {
			return nil, err
		}
	}
}
