package lock

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// treeRequest is the Request for the tree root/rel, named as treetx names
// its lock and gate.
func treeRequest(root, rel string) Request {
	dir := filepath.Join(root, rel)
	base := filepath.Join(filepath.Dir(dir), ".#treetx."+filepath.Base(dir))
	return Request{Path: base + ".lock", Options: Options{Gate: base + ".gate", Tree: dir}}
}

// TestAcquireAllNoDeadlock runs two takers of two trees each, over trees
// that overlap, in opposite orders (a with e/f, and e with a/b), for 500
// rounds: neither may deadlock, and they never hold at once.
func TestAcquireAllNoDeadlock(t *testing.T) {
	root := treeRoot(t)
	for _, d := range []string{"e/f"} {
		if err := mkdirAll(filepath.Join(root, d)); err != nil {
			t.Fatal(err)
		}
	}
	sets := [][]Request{
		{treeRequest(root, "a"), treeRequest(root, "e/f")},
		{treeRequest(root, "e"), treeRequest(root, "a/b")},
	}
	const rounds = 500
	var inside, overlaps, done atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, len(sets))
	for _, set := range sets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range rounds {
				ls, err := AcquireAll(context.Background(), set, Exclusive, 20*time.Second)
				if err != nil {
					errs <- err
					return
				}
				if inside.Add(1) > 1 {
					overlaps.Add(1)
				}
				time.Sleep(100 * time.Microsecond)
				inside.Add(-1)
				for _, l := range ls {
					if err := l.Release(); err != nil {
						errs <- err
						return
					}
				}
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	t.Logf("%d rounds of two overlapping two-tree sets in opposite orders: %d taken, %d overlaps", rounds, done.Load(), overlaps.Load())
	if overlaps.Load() > 0 {
		t.Errorf("the two sets were held at once %d times", overlaps.Load())
	}
	if done.Load() != 2*rounds {
		t.Errorf("%d sets taken, want %d", done.Load(), 2*rounds)
	}
}

// TestAcquireAllAllOrNothing checks that a set with one lock held elsewhere
// is not taken at all, within the timeout, and is once it is free.
func TestAcquireAllAllOrNothing(t *testing.T) {
	root := treeRoot(t)
	other, err := treeLock(t, root, "a/e", Exclusive, 0)
	if err != nil {
		t.Fatal(err)
	}
	set := []Request{treeRequest(root, "a/b"), treeRequest(root, "a/e")}
	if _, err := AcquireAll(context.Background(), set, Exclusive, 0); !errors.Is(err, ErrLocked) {
		t.Fatalf("one try: got %v, want a conflict", err)
	}
	if _, err := AcquireAll(context.Background(), set, Exclusive, 200*time.Millisecond); !errors.Is(err, ErrLocked) {
		t.Fatalf("with a timeout: got %v, want a conflict", err)
	}
	// Nothing of the set stays held: a/b is free.
	l, err := treeLock(t, root, "a/b", Exclusive, 0)
	if err != nil {
		t.Fatalf("a/b after a failed set: %v", err)
	}
	l.Release()
	go func() {
		time.Sleep(100 * time.Millisecond)
		other.Release()
	}()
	ls, err := AcquireAll(context.Background(), set, Exclusive, waitLimit)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range ls {
		l.Release()
	}
}

func mkdirAll(dir string) error { return os.MkdirAll(dir, 0o755) }
