package txn_test

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/fsys/fsystest"
	"github.com/treetx/treetx/internal/layout"
	"github.com/treetx/treetx/internal/treeimage"
	"github.com/treetx/treetx/lock"
	"github.com/treetx/treetx/txn"
)

// leftovers lists what is beside dir other than dir, its lock file and
// its gate.
func leftovers(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Dir(dir))
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	base := filepath.Base(dir)
	for _, e := range ents {
		if e.Name() != base && e.Name() != ".#treetx."+base+".lock" && e.Name() != ".#treetx."+base+".gate" {
			left = append(left, e.Name())
		}
	}
	return left
}

func TestCommitKeepsTheChanges(t *testing.T) {
	_, new := images(t)
	dir := newSample(t)
	tx, err := txn.Begin(dir, txn.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := mutate(dir); err != nil {
		t.Fatal(err)
	}
	res, err := tx.Commit()
	if err != nil {
		t.Fatal(err)
	}
	if len(res.InPlace) != 0 {
		t.Errorf("in-place writes reported for a command that wrote none: %v", res.InPlace)
	}
	treeimage.AssertEqual(t, "new", new, "committed", treeimage.MustCapture(t, dir, treeimage.Options{IgnoreDirMtime: true}))
	if left := leftovers(t, dir); left != nil {
		t.Errorf("left behind: %v", left)
	}
	if _, err := tx.Commit(); !errors.Is(err, txn.ErrDone) {
		t.Errorf("second Commit: %v, want ErrDone", err)
	}
}

func TestRollbackRestoresEverything(t *testing.T) {
	dir := newSample(t)
	old := treeimage.MustCapture(t, dir, treeimage.Options{})
	tx, err := txn.Begin(dir, txn.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := mutate(dir); err != nil {
		t.Fatal(err)
	}
	// Metadata through the shared inodes: chmod -R and chown -R.
	for _, args := range [][]string{{"chmod", "-R", "a+rwX,u-s,g-s", dir}, {"chown", "-R", "nobody", dir}} {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	res, err := tx.Rollback()
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Lost) != 0 {
		t.Errorf("content reported lost: %v", res.Lost)
	}
	if !slices.Equal(res.LeftOut, nil) {
		t.Errorf("left out: %v", res.LeftOut)
	}
	treeimage.AssertEqual(t, "old", old, "rolled back", treeimage.MustCapture(t, dir, treeimage.Options{}))
	if left := leftovers(t, dir); left != nil {
		t.Errorf("left behind: %v", left)
	}
}

func TestRollbackFindsContentWrittenInPlace(t *testing.T) {
	dir := newSample(t)
	old := treeimage.MustCapture(t, dir, treeimage.Options{})
	tx, err := txn.Begin(dir, txn.Options{})
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(dir, "a/b/c/deep.txt"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("appended in place\n")
	f.Close()
	os.Chmod(filepath.Join(dir, "a/run.sh"), 0o600)
	os.WriteFile(filepath.Join(dir, "new.txt"), []byte("x"), 0o644)

	res, err := tx.Rollback()
	var lost *txn.LostContentError
	if !errors.As(err, &lost) {
		t.Fatalf("Rollback: %v, want a *LostContentError", err)
	}
	if !slices.Equal(lost.Paths, []string{"a/b/c/deep.txt"}) || !slices.Equal(res.Lost, lost.Paths) {
		t.Errorf("lost %v (result %v), want [a/b/c/deep.txt]", lost.Paths, res.Lost)
	}
	if _, err := os.Stat(filepath.Join(lost.Kept, "new.txt")); err != nil {
		t.Errorf("failed tree not kept at %s: %v", lost.Kept, err)
	}
	// Everything else is restored; the lost file holds the new content.
	got := treeimage.MustCapture(t, dir, treeimage.Options{Ignore: func(p string) bool { return p == "a/b/c/deep.txt" }})
	oldFiltered := slices.DeleteFunc(slices.Clone(old), func(e treeimage.Entry) bool { return e.Path == "a/b/c/deep.txt" })
	// Directory a/b/c's mtime is unchanged too: the write did not touch it.
	treeimage.AssertEqual(t, "old", oldFiltered, "rolled back", got)
	left := leftovers(t, dir)
	if len(left) != 1 || !strings.HasPrefix(left[0], ".#treetx.repo.failed.") {
		t.Errorf("beside the directory: %v, want only the kept failed tree", left)
	}
}

func TestCommitWarnsOfContentWrittenInPlace(t *testing.T) {
	dir := newSample(t)
	tx, err := txn.Begin(dir, txn.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "with space.txt"), []byte("rewritten"), 0o644); err != nil {
		t.Fatal(err)
	}
	res, err := tx.Commit()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.InPlace, []string{"with space.txt"}) {
		t.Errorf("InPlace = %v, want [with space.txt]", res.InPlace)
	}
}

func TestCopyListProtectsFilesWrittenInPlace(t *testing.T) {
	dir := newSample(t)
	old := treeimage.MustCapture(t, dir, treeimage.Options{})
	tx, err := txn.Begin(dir, txn.Options{Copy: []string{"deep.txt"}})
	if err != nil {
		t.Fatal(err)
	}
	// CVSROOT/history is copied by default in a CVS repository.
	for _, rel := range []string{"a/b/c/deep.txt", "CVSROOT/history", "mod/d1/CVS/fileattr"} {
		if err := os.WriteFile(filepath.Join(dir, rel), []byte("overwritten in place\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	treeimage.AssertEqual(t, "old", old, "rolled back", treeimage.MustCapture(t, dir, treeimage.Options{}))
}

func TestExcludedEntriesAreLeftOut(t *testing.T) {
	dir := newSample(t)
	for _, rel := range []string{"mod/d1/#cvs.lock", "mod/d2/#cvs.rfl.host.42", "mod/d2/,f2.c,", "scratch.tmp"} {
		if strings.HasSuffix(rel, "#cvs.lock") {
			os.Mkdir(filepath.Join(dir, rel), 0o755)
			continue
		}
		os.WriteFile(filepath.Join(dir, rel), nil, 0o644)
	}
	tx, err := txn.Begin(dir, txn.Options{Exclude: []string{"*.tmp"}})
	if err != nil {
		t.Fatal(err)
	}
	// A change, so that the rollback puts the shadow back.
	if err := os.WriteFile(filepath.Join(dir, "new"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	res, err := tx.Rollback()
	if err != nil {
		t.Fatal(err)
	}
	if res.Unchanged {
		t.Errorf("the rollback of a changed tree says it was unchanged")
	}
	want := []string{"mod/d1/#cvs.lock", "mod/d2/#cvs.rfl.host.42", "mod/d2/,f2.c,", "scratch.tmp"}
	got := slices.Sorted(slices.Values(res.LeftOut))
	if !slices.Equal(got, want) {
		t.Errorf("LeftOut = %v, want %v", got, want)
	}
	for _, rel := range want {
		if _, err := os.Lstat(filepath.Join(dir, rel)); err == nil {
			t.Errorf("%s came back after the rollback", rel)
		}
	}
}

func TestBeginRefuses(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T) string // returns the DIR argument
		want  string                    // in the error
	}{
		{"missing", func(t *testing.T) string { return filepath.Join(t.TempDir(), "nope") }, "no such directory"},
		{"a file", func(t *testing.T) string {
			p := filepath.Join(t.TempDir(), "f")
			os.WriteFile(p, nil, 0o644)
			return p
		}, "not a directory"},
		{"root", func(t *testing.T) string { return "/" }, "root directory"},
		{"name too long", func(t *testing.T) string {
			p := filepath.Join(t.TempDir(), strings.Repeat("n", layout.MaxBaseLen+1))
			if err := os.Mkdir(p, 0o755); err != nil {
				t.Fatal(err)
			}
			return p
		}, "limit of a file name"},
		{"a journal left", func(t *testing.T) string {
			dir := newSample(t)
			os.WriteFile(filepath.Join(filepath.Dir(dir), ".#treetx.repo.journal"), []byte("{}"), 0o644)
			return dir
		}, "treetx recover"},
		{"a shadow name not ours", func(t *testing.T) string {
			dir := newSample(t)
			os.Mkdir(filepath.Join(filepath.Dir(dir), ".#treetx.repo.complete"), 0o755)
			return dir
		}, "no journal claims it"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := tt.setup(t)
			var before []string
			if dir != "/" {
				before = listing(t, filepath.Dir(dir))
			}
			_, err := txn.Begin(dir, txn.Options{})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Begin(%s) = %v, want an error containing %q", dir, err, tt.want)
			}
			if dir == "/" {
				return
			}
			lockFiles := func(s string) bool { return strings.HasSuffix(s, ".lock") || strings.HasSuffix(s, ".gate") }
			after := slices.DeleteFunc(listing(t, filepath.Dir(dir)), lockFiles)
			before = slices.DeleteFunc(before, lockFiles)
			if !slices.Equal(before, after) {
				t.Errorf("parent changed: before %v, after %v", before, after)
			}
		})
	}
}

func listing(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// TestBeginFailsCleanly fails each step of Begin with each errno a real
// file system can return; Begin must report it and leave the tree and its
// parent as they were.
func TestBeginFailsCleanly(t *testing.T) {
	dir := newSample(t)
	rec := &fsystest.FS{Record: true}
	tx, err := txn.Begin(dir, txn.Options{FS: rec})
	if err != nil {
		t.Fatal(err)
	}
	steps := rec.Steps()
	if _, err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	old := treeimage.MustCapture(t, dir, treeimage.Options{})
	errnos := []syscall.Errno{unix.ENOSPC, unix.EIO, unix.EMLINK, unix.EACCES, unix.EXDEV}
	for step := 1; step <= steps; step++ {
		errno := errnos[step%len(errnos)]
		f := &fsystest.FS{FailAt: step, FailErr: errno}
		tx, err := txn.Begin(dir, txn.Options{FS: f})
		if err == nil {
			tx.Rollback()
			t.Errorf("step %d failing with %v: Begin succeeded", step, errno)
			continue
		}
		if !errors.Is(err, errno) {
			t.Errorf("step %d: error %q does not carry %v", step, err, errno)
		}
		if got := treeimage.MustCapture(t, dir, treeimage.Options{}); !got.Equal(old) {
			t.Errorf("step %d failing with %v: tree changed: %v", step, errno, old.Diff(got))
		}
		if left := leftovers(t, dir); left != nil {
			t.Errorf("step %d failing with %v: left behind %v", step, errno, left)
		}
	}
}

func TestBeginWaitsForTheLock(t *testing.T) {
	dir := newSample(t)
	tx, err := txn.Begin(dir, txn.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	_, err = txn.Begin(dir, txn.Options{NoWait: true})
	var held *lock.HeldError
	if !errors.As(err, &held) {
		t.Fatalf("second Begin: %v, want a *lock.HeldError", err)
	}
	if held.Holder == nil || held.Holder.PID != os.Getpid() {
		t.Errorf("holder %v, want this process", held.Holder)
	}
	// The zero Options wait for the lock, as the command line does.
	got := make(chan error, 1)
	go func() {
		tx2, err := txn.Begin(dir, txn.Options{})
		if err == nil {
			_, err = tx2.Rollback()
		}
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("Begin with zero Options did not wait for the held lock: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	if _, err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatalf("Begin with zero Options, once the lock was free: %v", err)
	}
}

func TestDeferRemovalLeavesGarbageToTheCaller(t *testing.T) {
	for _, path := range []string{"commit", "rollback"} {
		t.Run(path, func(t *testing.T) {
			dir := newSample(t)
			tx, err := txn.Begin(dir, txn.Options{DeferRemoval: true})
			if err != nil {
				t.Fatal(err)
			}
			var res *txn.Result
			if path == "commit" {
				res, err = tx.Commit()
			} else {
				res, err = tx.Rollback()
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Garbage) != 1 || !strings.Contains(res.Garbage[0], ".#treetx.repo.removing.") {
				t.Fatalf("Garbage = %v, want the one tree named for removal", res.Garbage)
			}
			if _, err := os.Lstat(res.Garbage[0]); err != nil {
				t.Fatalf("garbage tree already gone: %v", err)
			}
			// Recovery has nothing to do for the directory itself.
			if err := txn.RemoveGarbage(res.Garbage, nil); err != nil {
				t.Fatal(err)
			}
			if left := leftovers(t, dir); left != nil {
				t.Errorf("left behind: %v", left)
			}
		})
	}
}

func TestRemoveGarbageRefusesOtherNames(t *testing.T) {
	parent := t.TempDir()
	for _, name := range []string{"repo", ".#treetx.repo.complete", ".#treetx.repo.removing.xyz", ".#treetx.repo.failed.0123456789abcdef", ".#treetx..removing.0123456789abcdef"} {
		p := filepath.Join(parent, name)
		if err := os.Mkdir(p, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := txn.RemoveGarbage([]string{p}, nil); err == nil {
			t.Errorf("RemoveGarbage(%s) accepted it", name)
		}
		if _, err := os.Lstat(p); err != nil {
			t.Errorf("%s was removed: %v", name, err)
		}
	}
	ok := filepath.Join(parent, ".#treetx.my.dir.removing.0123456789abcdef")
	os.MkdirAll(filepath.Join(ok, "x/y"), 0o755)
	if err := txn.RemoveGarbage([]string{ok}, nil); err != nil {
		t.Errorf("RemoveGarbage(%s): %v", ok, err)
	}
	if _, err := os.Lstat(ok); !os.IsNotExist(err) {
		t.Errorf("%s still there", ok)
	}
}
