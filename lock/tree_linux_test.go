package lock

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// treeLock takes the lock of the tree root/rel (its lock file beside it, as
// treetx names it) in mode, trying once.
func treeLock(t *testing.T, root, rel string, mode Mode, timeout time.Duration) (*Lock, error) {
	t.Helper()
	dir := filepath.Join(root, rel)
	path := filepath.Join(filepath.Dir(dir), ".#treetx."+filepath.Base(dir)+".lock")
	return Acquire(context.Background(), path, Options{Mode: mode, Timeout: timeout, Tree: dir, Gate: strings.TrimSuffix(path, ".lock") + ".gate"})
}

// treeRoot makes the directories a/b/c/d and a/e in a fresh directory and
// returns it, resolved.
func treeRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"a/b/c/d", "a/e"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// TestTreeCompatibility checks every pair of users of two trees, in both
// orders: overlapping trees exclude each other unless both only read.
func TestTreeCompatibility(t *testing.T) {
	type user struct {
		mode Mode
		tree string
	}
	W := func(tree string) user { return user{Exclusive, tree} }
	R := func(tree string) user { return user{Shared, tree} }
	tests := []struct {
		first, second user
		conflict      bool
	}{
		{W("a"), W("a"), true},
		{W("a"), R("a"), true},
		{R("a"), R("a"), false},
		{W("a"), W("a/b"), true},
		{W("a"), R("a/b"), true},
		{R("a"), W("a/b"), true},
		{R("a"), R("a/b"), false},
		{W("a"), W("a/b/c/d"), true},
		{R("a"), W("a/b/c/d"), true},
		{W("a/b"), W("a/e"), false},
		{W("a/b"), R("a/e"), false},
		{R("a/b"), W("a/e"), false},
		{W("a/b/c"), W("a/e"), false},
		{W("a"), W("a/missing"), true},
		{R("a"), W("a/missing"), true},
	}
	for _, tc := range tests {
		for _, order := range []string{"outer first", "inner first"} {
			first, second := tc.first, tc.second
			if order == "inner first" {
				first, second = second, first
			}
			name := first.mode.String() + " " + first.tree + ", then " + second.mode.String() + " " + second.tree
			t.Run(name, func(t *testing.T) {
				root := treeRoot(t)
				l1, err := treeLock(t, root, first.tree, first.mode, 0)
				if err != nil {
					t.Fatalf("first: %v", err)
				}
				defer l1.Release()
				l2, err := treeLock(t, root, second.tree, second.mode, 0)
				if tc.conflict {
					if !errors.Is(err, ErrLocked) {
						t.Fatalf("second: got %v, want a conflict", err)
					}
					var held *HeldError
					if !errors.As(err, &held) {
						t.Fatalf("second: %T is not a *HeldError", err)
					}
					if first.tree != second.tree && held.Conflict == "" {
						t.Errorf("second: %v does not name the overlapping tree", err)
					}
					// Once the first is released, the second gets it.
					if err := l1.Release(); err != nil {
						t.Fatal(err)
					}
					l2, err = treeLock(t, root, second.tree, second.mode, 0)
				}
				if err != nil {
					t.Fatalf("second: %v", err)
				}
				l2.Release()
			})
		}
	}
}

// TestTreeWaits checks that a writer on a tree inside a held one waits for
// it, in another process, and gets it once the holder is killed.
func TestTreeWaits(t *testing.T) {
	root := treeRoot(t)
	dir := filepath.Join(root, "a")
	cmd := helperCommand("hold", filepath.Join(root, ".#treetx.a.lock"), Exclusive)
	cmd.Env = append(cmd.Env, treeEnv+"="+dir)
	h := startCmd(t, cmd)
	h.expect(t, "locked")
	got := make(chan error, 1)
	go func() {
		l, err := treeLock(t, root, "a/b/c", Exclusive, waitLimit)
		if err == nil {
			l.Release()
		}
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("a writer inside a held tree did not wait: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	h.kill(t)
	if err := <-got; err != nil {
		t.Fatalf("after the holder was killed: %v", err)
	}
}

// TestTreeSwapped checks that a waiter that opened a directory which a
// rollback then replaced by its shadow ends up holding the directory now in
// its place, and that the shadow was covered meanwhile.
func TestTreeSwapped(t *testing.T) {
	root := treeRoot(t)
	outer, err := treeLock(t, root, "a", Exclusive, 0)
	if err != nil {
		t.Fatal(err)
	}
	shadow := filepath.Join(root, ".#treetx.a.complete")
	if err := os.MkdirAll(filepath.Join(shadow, "b"), 0o755); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(shadow, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := outer.Cover(fd); err != nil {
		t.Fatal(err)
	}
	got := make(chan *Lock, 1)
	errc := make(chan error, 1)
	go func() {
		l, err := treeLock(t, root, "a/b", Exclusive, waitLimit)
		errc <- err
		got <- l
	}()
	time.Sleep(100 * time.Millisecond)
	// The rollback's exchange: the shadow takes the tree's name.
	if err := unix.Renameat2(unix.AT_FDCWD, shadow, unix.AT_FDCWD, filepath.Join(root, "a"), unix.RENAME_EXCHANGE); err != nil {
		t.Fatal(err)
	}
	// The shadow, now in the tree's place, is covered: still waiting.
	select {
	case err := <-errc:
		t.Fatalf("a writer inside the swapped-in shadow did not wait: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	if err := outer.Release(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	l := <-got
	defer l.Release()
	var st, held unix.Stat_t
	if err := unix.Stat(filepath.Join(root, "a"), &st); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fstat(l.tree.ancestors()[len(l.tree.ancestors())-1].fd, &held); err != nil {
		t.Fatal(err)
	}
	if st.Ino != held.Ino {
		t.Errorf("the waiter holds inode %d as a, which is now inode %d", held.Ino, st.Ino)
	}
	// And a new writer of a now waits for it.
	if _, err := treeLock(t, root, "a", Exclusive, 0); !errors.Is(err, ErrLocked) {
		t.Errorf("a writer of a beside a writer of a/b: got %v, want a conflict", err)
	}
}

// TestTreeWriterFairness checks that readers of trees inside a tree cannot
// keep a writer of that tree out forever: once it waits, newcomers wait
// behind it.
func TestTreeWriterFairness(t *testing.T) {
	root := treeRoot(t)
	r1, err := treeLock(t, root, "a/b", Shared, 0)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() {
		l, err := treeLock(t, root, "a", Exclusive, waitLimit)
		if err == nil {
			l.Release()
		}
		got <- err
	}()
	time.Sleep(150 * time.Millisecond)
	if _, err := treeLock(t, root, "a/e", Shared, 0); !errors.Is(err, ErrLocked) {
		t.Fatalf("a reader arriving behind a waiting writer: got %v, want to wait", err)
	}
	r1.Release()
	if err := <-got; err != nil {
		t.Fatal(err)
	}
}

// TestTreeInheritableDirs checks that a child given the directory
// descriptors keeps the tree locked after the holder is gone.
func TestTreeInheritableDirs(t *testing.T) {
	root := treeRoot(t)
	l, err := treeLock(t, root, "a/b", Exclusive, 0)
	if err != nil {
		t.Fatal(err)
	}
	files, err := l.InheritableDirs()
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 2 {
		t.Fatalf("%d directory descriptors, want at least a's and b's", len(files))
	}
	// Dropping the Lock's own descriptors without releasing (as a killed
	// holder's are closed) leaves the copies holding.
	for _, ds := range [][]chainDir{l.tree.chain, l.tree.covers} {
		for _, d := range ds {
			unix.Close(d.fd)
		}
	}
	l.tree.chain, l.tree.covers = nil, nil
	if _, err := treeLock(t, root, "a", Exclusive, 0); !errors.Is(err, ErrLocked) {
		t.Fatalf("with the copies open: got %v, want a conflict", err)
	}
	for _, f := range files {
		f.Close()
	}
	l.Release()
	l2, err := treeLock(t, root, "a", Exclusive, 0)
	if err != nil {
		t.Fatalf("with the copies closed: %v", err)
	}
	l2.Release()
}
